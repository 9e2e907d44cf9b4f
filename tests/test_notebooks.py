"""The notebooks: committed clean, and executed in order in smoke mode (the CI run of the workbook).

Two execution paths, each notebook executed once by the first:

* papermill, through :func:`coda.workbook.run_notebooks`: every ``notebooks/NN_*.ipynb`` in
  order, ``SMOKE=True``, figures and executed copies in a temporary folder;
* nbval (``pytest --nbval-lax``) on the executed copy of notebook 01: it runs the notebook
  again and compares the outputs of the cells tagged ``nbval-check-output`` (small
  deterministic cells) with the ones papermill recorded, so they must be reproducible.
"""

import html
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from coda import book, workbook

NOTEBOOKS = workbook.find_notebooks()
REQUIRED_PARAMETERS = ("SMOKE", "SEED", "DATA_DIR", "FIG_DIR", "DEVICE")
CELL_TIMEOUT = 600  # seconds; a smoke-mode cell takes seconds
NBVAL_NOTEBOOK = "01_dau_alignment.ipynb"


def _child_env() -> dict:
    """The environment for kernels and subprocesses: the project importable, one thread each."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(workbook.PROJECT_ROOT), env.get("PYTHONPATH")]))
    return env


def test_there_are_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS][:3] == ["01", "02", "03"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_is_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, f"outputs committed in {path.name}"
    tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "exactly one cell tagged 'parameters'"
    assert code[1] is tagged[0], "the parameters cell is the first code cell after the imports"
    names = [line.split("=")[0].strip() for line in tagged[0].source.splitlines() if "=" in line]
    assert set(REQUIRED_PARAMETERS) <= set(names), f"missing parameters in {path.name}"
    for line in tagged[0].source.splitlines():
        assert "  # " in line, f"every parameter has a comment: {line!r}"
    assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith(f"# {path.name[:2]} ")
    answers = next((i for i, c in enumerate(nb.cells) if c.cell_type == "markdown"
                    and c.source.startswith("## Answers")), len(nb.cells))  # the worked answers come last
    ending = "\n".join(c.source for c in nb.cells[answers - 2 : answers] if c.cell_type == "markdown")
    assert "## Summary" in ending and "## Exercises" in ending


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """Execute every notebook once, in order, in smoke mode (module-scoped: shared by the tests)."""
    tmp = tmp_path_factory.mktemp("workbook")
    env = _child_env()
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update({k: env[k] for k in saved})  # inherited by the kernels
    try:
        results = workbook.run_notebooks(
            out_dir=tmp / "build", fig_dir=tmp / "figures", smoke=True,
            data_dir=os.environ.get("CODA_DATA"), cell_timeout=CELL_TIMEOUT, stop_on_error=False,
        )
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return tmp, results


@pytest.mark.slow
def test_every_notebook_runs_in_smoke_mode(smoke_run):
    tmp, results = smoke_run
    print("\n" + workbook.format_summary(results))
    failed = [f"{r.name}: {r.error}" for r in results if not r.ok]
    assert not failed, "notebooks failed:\n" + "\n".join(failed)
    assert [r.name for r in results] == [p.name for p in NOTEBOOKS]
    for r in results:
        executed = nbformat.read(r.output, as_version=4)
        assert any("injected-parameters" in c.metadata.get("tags", []) for c in executed.cells)


@pytest.mark.slow
def test_smoke_run_saves_figures_where_it_is_told(smoke_run):
    tmp, results = smoke_run
    figures = sorted(p.name for p in (tmp / "figures").glob("*.png"))
    for r in results:
        assert any(f.startswith(r.name[:2] + "_") for f in figures), f"{r.name} saved no figure"


@pytest.mark.slow
def test_nbval_reproduces_the_checked_cells(smoke_run):
    """nbval --nbval-lax re-executes notebook 01's executed copy; tagged cells must match."""
    tmp, results = smoke_run
    executed = next(r.output for r in results if r.name == NBVAL_NOTEBOOK)
    nb = nbformat.read(executed, as_version=4)
    checked = [c for c in nb.cells if "nbval-check-output" in c.metadata.get("tags", [])]
    assert checked and all(c.outputs for c in checked), "the checked cells have recorded outputs"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "-q", "-p", "no:cacheprovider", str(executed)],
        cwd=Path(executed).parent, env=_child_env(), capture_output=True, text=True, timeout=CELL_TIMEOUT,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


@pytest.mark.slow
def test_executed_copies_keep_the_epoch_lines_and_no_progress_bar(smoke_run):
    """The trainer's bar (tqdm.auto, leave=False) renders live in JupyterLab; the executed copy
    keeps only the line it prints per epoch."""
    tmp, results = smoke_run
    executed = nbformat.read(next(r.output for r in results if r.name.startswith("02_")), as_version=4)
    texts = []
    for cell in executed.cells:
        for out in cell.get("outputs", []):
            texts.append(out.get("text", "") + "".join(out.get("data", {}).get("text/plain", "")))
            data = out.get("data", {})
            if "application/vnd.jupyter.widget-view+json" in data:
                assert "Box(" in data.get("text/plain", ""), f"a widget that is not an explorer: {data}"
    text = "\n".join(texts)
    for bar in ("it/s]", "|\u2588", "%|"):
        assert bar not in text, f"a progress bar ({bar!r}) in 02's executed copy"
    assert not re.search(r"\b0/\d+ \[", text), "a frozen 0/N bar in 02's executed copy"
    assert re.search(r"^epoch +1/\d+ ", text, re.M), "the trainer's per-epoch line"


@pytest.mark.slow
def test_the_book_builds_from_the_smoke_run(smoke_run, tmp_path):
    """coda workbook book, as CI builds it: the smoke run's executed copies rendered, not rerun."""
    tmp, results = smoke_run
    start = time.perf_counter()
    site = book.build_book([r.output for r in results], tmp_path / "book", smoke=True, log=print)
    print(f"book built in {time.perf_counter() - start:.1f} s")
    index = (site / "index.html").read_text(encoding="utf-8")
    assert "smoke-mode" in index
    for r in results:
        page = site / "notebooks" / (Path(r.name).stem + ".html")
        assert page.exists(), f"no page for {r.name}"
        assert f'href="notebooks/{page.name}"' in index, f"{r.name} is not in the landing page's contents"
        text = html.unescape(page.read_text(encoding="utf-8"))
        title = nbformat.read(r.output, as_version=4).cells[0].source.splitlines()[0].removeprefix("# ")
        assert title.split(" \u00b7 ")[-1].split("?")[0] in text, f"{r.name}: title {title!r} missing"
        images = re.findall(r'<img [^>]*src="\.\./(_images/[^"]+\.png)"', text)
        assert images, f"{r.name}: no figure"
        assert all((site / img).exists() for img in images)
    assert (site / "docs" / "method.html").exists()
    assert (site / "_static" / "mathjax" / "tex-chtml.js").exists(), "MathJax is bundled"
    assert book.external_references(site) == [], "the site loads something from the network"
