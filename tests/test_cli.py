"""coda.cli: the `coda` command dispatches to each module's main(argv)."""

import importlib
import shutil
import subprocess
import sys

import pytest

from coda import cli


def test_every_command_is_a_module_with_main():
    assert sorted(cli.COMMANDS) == sorted(["train", "evaluate", "sweeps", "pretrained", "workbook", "published",
                                               "recipes", "depth"])
    for module, _ in cli.COMMANDS.values():
        assert callable(importlib.import_module(module).main)


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in cli.COMMANDS)


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_each_command_has_its_own_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: coda {command} ")


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_python_m_usage_names_the_module(command, capsys):
    """Called directly (python -m coda.X), and after a coda command has run, the usage says python -m."""
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(cli.COMMANDS[command][0]).main(["--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: python -m coda.{command} ")


def test_subcommands_and_errors_name_the_coda_command(capsys):
    with pytest.raises(SystemExit):
        cli.main(["published", "download", "--help"])
    assert capsys.readouterr().out.startswith("usage: coda published download ")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train", "--epochs", "2"])  # --out is missing
    assert exit_info.value.code == 2 and capsys.readouterr().err.startswith("usage: coda train ")
    assert cli.prog("coda.train") == "python -m coda.train", "reset after the command"


def test_arguments_reach_the_module(monkeypatch):
    seen = []
    monkeypatch.setattr("coda.published.main", lambda argv: seen.append(argv))
    assert cli.main(["published", "list", "--cache-dir", "x"]) == 0
    assert seen == [["list", "--cache-dir", "x"]]
    monkeypatch.setattr("coda.workbook.main", lambda argv: 3)
    assert cli.main(["workbook", "--smoke"]) == 3, "the module's exit status is kept"


def test_unknown_or_missing_command_fails(capsys):
    for argv in ([], ["frobnicate"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 2
    assert "invalid choice: 'frobnicate'" in capsys.readouterr().err


def test_installed_console_script():
    """`pip install -e .` creates the `coda` script from [project.scripts]."""
    exe = shutil.which("coda")
    if exe is None:
        pytest.skip("the coda script is not installed (pip install -e .)")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True, check=True).stdout
    assert out.startswith("usage: coda") and all(name in out for name in cli.COMMANDS)
    out = subprocess.run([exe, "pretrained", "list"], capture_output=True, text=True, check=True).stdout
    assert "(default)" in out


def test_python_m_still_works():
    out = subprocess.run([sys.executable, "-m", "coda.published", "list"], capture_output=True, text=True,
                         check=True).stdout
    assert "cifar10-9L-S-T1000" in out


def test_recorded_commands_do_not_name_this_machines_data_folder():
    argv = ["layers", "--data", "/home/someone/cifar", "--n-grids", "5", "--model", "run dir/last.pt"]
    assert cli.recorded_command("coda.sweeps", argv) == (
        "python -m coda.sweeps layers --data <data folder> --n-grids 5 --model 'run dir/last.pt'")
    assert cli.recorded_command("coda.depth", ["evaluate", "--data=/x/y"]) == (
        "python -m coda.depth evaluate --data=<data folder>")
    assert cli.recorded_command("coda.evaluate", ["--model", "m"]) == "python -m coda.evaluate --model m"


def test_a_results_file_records_the_command_without_the_data_folder(tmp_path, monkeypatch):
    """End to end through `coda.sweeps layers`, whose record once held a machine's path."""
    import json

    from coda import sweeps

    monkeypatch.setattr(sweeps, "evaluate_layers", lambda *a, **k: [{"layer": None, "localisation_mean": 0.5}])
    monkeypatch.setattr(sweeps, "load_cifar10", lambda split, data: None)
    data = tmp_path / "my data"
    sweeps.main(["layers", "--model", "cifar10-9L-S-f8-T1000", "--out", str(tmp_path), "--data", str(data)])
    record = json.loads(next(tmp_path.glob("layers*.json")).read_text())
    assert record["command"].endswith("--data <data folder>")
    assert str(data) not in record["command"]
