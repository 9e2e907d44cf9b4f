"""coda.workbook: finding the numbered notebooks, injecting parameters, reporting failures."""

import json

import nbformat
import pytest
from papermill.exceptions import PapermillExecutionError

from coda import workbook


def _notebook(path, *sources, parameters="SMOKE = False\nFIG_DIR = 'figures'"):
    """Write a notebook: a tagged parameters cell, then one code cell per source."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell(parameters)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell("# a test notebook"), params]
    nb.cells += [nbformat.v4.new_code_cell(s) for s in sources]
    nbformat.write(nb, path)
    return path


def test_find_notebooks_takes_numbered_ones_in_order(tmp_path):
    for name in ("02_b.ipynb", "01_a.ipynb", "10_c.ipynb", "notes.ipynb", "1_x.ipynb", "03_d.txt"):
        (tmp_path / name).write_text("{}")
    assert [p.name for p in workbook.find_notebooks(tmp_path)] == ["01_a.ipynb", "02_b.ipynb", "10_c.ipynb"]
    assert [p.name for p in workbook.find_notebooks(tmp_path, only=["10", "01_a"])] == ["01_a.ipynb", "10_c.ipynb"]
    with pytest.raises(ValueError, match="99"):
        workbook.find_notebooks(tmp_path, only=["99"])


def test_describe_error_names_the_cell_of_the_committed_notebook():
    sources = ["# title", "SMOKE = False", "x = 1", "y = 1 / 0"]
    err = PapermillExecutionError(cell_index=4, exec_count=3, source="y = 1 / 0", ename="ZeroDivisionError",
                                  evalue="division by zero", traceback=[])
    text = workbook.describe_error(err, sources)
    assert text.startswith("cell 3 (In [3])")  # index 3 in the committed notebook, not papermill's 4
    assert "'y = 1 / 0'" in text and "ZeroDivisionError: division by zero" in text


def test_format_summary_lists_wall_times(tmp_path):
    results = [workbook.NotebookResult("01_a.ipynb", tmp_path, 12.34),
               workbook.NotebookResult("02_long_name.ipynb", tmp_path, 5.0, error="cell 2: boom")]
    table = workbook.format_summary(results)
    assert "01_a.ipynb" in table and "12.3 s" in table
    assert "FAILED" in table and "5.0 s" in table
    assert "17.3 s" in table  # the total


@pytest.mark.slow
def test_runner_injects_parameters_and_reports_the_failing_notebook_and_cell(tmp_path, capsys):
    """One papermill run of three tiny notebooks: ok, failing, never reached."""
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir()
    _notebook(notebooks / "01_ok.ipynb",
              "import json, pathlib\n"
              "pathlib.Path(FIG_DIR).mkdir(parents=True, exist_ok=True)\n"
              "(pathlib.Path(FIG_DIR) / 'params.json').write_text(json.dumps({'SMOKE': SMOKE, 'EXTRA': EXTRA}))",
              parameters="SMOKE = False\nFIG_DIR = 'figures'\nEXTRA = 0")
    _notebook(notebooks / "02_fails.ipynb", "x = 1", "raise RuntimeError('deliberate failure')", "print('unreachable')")
    _notebook(notebooks / "03_never.ipynb", "print('never run')")
    fig_dir = tmp_path / "figs"
    out = tmp_path / "build"

    code = workbook.main(["--notebooks", str(notebooks), "--out", str(out), "--fig-dir", str(fig_dir),
                          "--smoke", "-p", "EXTRA", "7", "--no-progress"])
    captured = capsys.readouterr()

    assert code == 1
    assert json.loads((fig_dir / "params.json").read_text()) == {"SMOKE": True, "EXTRA": 7}
    assert (out / "01_ok.ipynb").exists() and (out / "02_fails.ipynb").exists()
    assert not (out / "03_never.ipynb").exists(), "the runner stops at the first failure"
    assert "FAILED: 02_fails.ipynb, cell 3" in captured.err
    assert "RuntimeError: deliberate failure" in captured.err
    assert "raise RuntimeError" in captured.err  # the failing cell's first line
    summary = captured.out[captured.out.index("notebook  "):]
    lines = {line.split()[0]: line for line in summary.splitlines() if line.endswith(" s")}
    assert "ok" in lines["01_ok.ipynb"] and "FAILED" in lines["02_fails.ipynb"]
    assert "03_never.ipynb" not in lines
    assert "total" in lines


# ----- what the notebooks share ---------------------------------------------------------------


@pytest.mark.parametrize("smoke, ci, expected", [(None, "true", True), (None, "", False), (False, "true", False),
                                                 (True, "", True)])
def test_start_lesson_derives_smoke_seeds_and_applies_the_style(monkeypatch, smoke, ci, expected):
    import matplotlib
    import torch

    from coda import plotting

    monkeypatch.setenv("CI", ci)
    with matplotlib.rc_context():
        matplotlib.rcParams["savefig.dpi"] = 17
        lesson = workbook.start_lesson(smoke, seed=3, device="cpu", fig_dir="figs")
        assert matplotlib.rcParams["savefig.dpi"] == plotting.DPI
    drawn = torch.rand(3)
    torch.manual_seed(3)
    assert torch.equal(drawn, torch.rand(3))
    smoke_out, device, fig_dir = lesson
    assert smoke_out is expected and device == torch.device("cpu") and str(fig_dir) == "figs"


def test_text_table_aligns_text_left_and_numbers_right():
    rows = [{"name": "a", "n": 1500, "acc": 0.71234, "T": 1000.0, "loc": None},
            {"name": "long-name", "n": 2, "acc": 0.5, "T": 10.0, "loc": 0.25}]
    assert workbook.text_table(rows, ["name", "n", "acc", "T", "loc"]).splitlines() == [
        "name           n    acc     T    loc",
        "a          1,500  0.712  1000      -",
        "long-name      2  0.500    10  0.250",
    ]
