"""coda.book: which executed copies can go into the book, and the site built from tiny executed notebooks.

The book built from the real lessons is checked in test_notebooks.py, from the smoke run.
"""

import base64
import os
import time

import nbformat
import pytest

from coda import book

# a 1x1 PNG, as a matplotlib figure's output would carry one
PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000100e5270de20000000049454e44ae426082")).decode()


def _executed(path, title, smoke=True, exception=False, widget=False):
    """An executed copy as papermill writes it: a title, math, a figure output, papermill's record."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["papermill"] = {"parameters": {"SMOKE": smoke}, "exception": exception}
    figure = nbformat.v4.new_output("display_data", data={"image/png": PNG, "text/plain": "<Figure>"})
    outputs = [figure, nbformat.v4.new_output("stream", name="stdout", text="epoch   1/1  loss 0.5\n")]
    if widget:
        outputs.append(nbformat.v4.new_output("display_data", data={
            "application/vnd.jupyter.widget-view+json": {"model_id": "abc", "version_major": 2, "version_minor": 0},
            "text/plain": "VBox(children=(FloatSlider(value=60.0),))"}))
        nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {"abc": {}}}}
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {title}\n\nThe unit: $\\lVert W(x)\\,x \\rVert \\le 1$; "
                                              "see [the method](../docs/method.md#the-network)."),
                nbformat.v4.new_code_cell("plot()", execution_count=1, outputs=outputs)]
    injected = nbformat.v4.new_code_cell("# Parameters\nFIG_DIR = '/somewhere/on/the/builder'", execution_count=0)
    injected.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(1, injected)
    nbformat.write(nb, path)
    return path


def test_stale_reason_names_what_needs_a_run(tmp_path):
    source = tmp_path / "01_a.ipynb"
    source.write_text("{}")
    copy = tmp_path / "out" / "01_a.ipynb"
    assert book.stale_reason(source, copy, smoke=True) == "no executed copy"
    copy.parent.mkdir()
    _executed(copy, "01 · A", smoke=True)
    os.utime(source, (time.time() - 60, time.time() - 60))
    assert book.stale_reason(source, copy, smoke=True) is None
    assert "full book" in book.stale_reason(source, copy, smoke=False)
    _executed(copy, "01 · A", smoke=False)
    assert book.stale_reason(source, copy, smoke=True) is None, "a full run does for a smoke book"
    _executed(copy, "01 · A", exception=True)
    assert book.stale_reason(source, copy, smoke=True) == "its run failed"
    os.utime(source, (time.time() + 60, time.time() + 60))
    _executed(copy, "01 · A")
    assert book.stale_reason(source, copy, smoke=True) == "the notebook changed since its run"


def test_the_site_renders_the_executed_copies_offline_and_replaces_a_site_only_when_built(tmp_path):
    executed = [_executed(tmp_path / "01_first.ipynb", "01 · The first lesson", widget=True),
                _executed(tmp_path / "02_second.ipynb", "02 · The second lesson")]
    out = tmp_path / "site"
    assert book.build_book(executed, out, smoke=True, log=print) == out.resolve()

    index = (out / "index.html").read_text(encoding="utf-8")
    assert "The CoDA-Nets workbook" in index and "smoke-mode" in index
    assert index.index("notebooks/01_first.html") < index.index("notebooks/02_second.html")
    first = (out / "notebooks" / "01_first.html").read_text(encoding="utf-8")
    assert "The first lesson" in first and "epoch   1/1" in first
    assert "_images/" in first and list((out / "_images").glob("*.png"))
    assert "docs/method.html#the-network" in first, "links to the method page resolve"
    assert "interactive widget" in first and "VBox(" not in first
    assert "/somewhere/on/the/builder" not in first, "papermill's injected parameters are hidden"
    assert "mathjax/tex-chtml.js" in first and (out / "_static" / "mathjax" / "tex-chtml.js").exists()
    assert book.external_references(out) == []
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "no build folder left"

    (out / "marker").write_text("the previous site")
    broken = tmp_path / "03_broken.ipynb"
    broken.write_text("{ not a notebook")
    with pytest.raises(Exception):  # noqa: B017 - whatever the failure, the old site stays
        book.build_book(executed + [broken], out, smoke=True)
    assert (out / "marker").exists() and (out / "notebooks" / "02_second.html").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    book.build_book(executed[:1], out, smoke=False)
    assert not (out / "marker").exists() and not (out / "notebooks" / "02_second.html").exists()
    assert "smoke-mode" not in (out / "index.html").read_text(encoding="utf-8")


def test_external_references_finds_loads_and_ignores_links(tmp_path):
    (tmp_path / "page.html").write_text(
        '<a href="https://arxiv.org/abs/2104.00032">paper</a>\n<script src="https://cdn.example/x.js"></script>\n'
        '<link rel="stylesheet" href="//fonts.example/css">\n<img src="_images/a.png">')
    (tmp_path / "s.css").write_text('@import url("https://fonts.example/f.css");\nb { background: url(x.png) }')
    found = book.external_references(tmp_path)
    assert len(found) == 3 and not any("arxiv" in f for f in found)
