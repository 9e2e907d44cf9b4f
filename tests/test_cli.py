"""coda.cli: the `coda` command dispatches to each module's main(argv)."""

import importlib
import shutil
import subprocess
import sys

import pytest

from coda import cli


def test_every_command_is_a_module_with_main():
    assert sorted(cli.COMMANDS) == sorted(["train", "evaluate", "sweeps", "pretrained", "workbook", "published"])
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
    assert f"python -m coda.{command}" in capsys.readouterr().out


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
