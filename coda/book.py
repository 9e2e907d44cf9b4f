"""The workbook as a static HTML site: the executed lessons, with their outputs and figures.

::

    coda workbook book                 # = python -m coda.workbook book; the site in build/book/
    coda workbook book --smoke         # from smoke-mode runs (what CI builds)
    coda workbook book --out site      # another folder

The site is Sphinx with myst-nb, rendering the executed copies that :func:`coda.workbook.run_notebooks`
writes (``build/notebooks/``): myst-nb never executes a notebook here (``nb_execution_mode =
"off"``), so each lesson runs once. Copies that are missing, older than their notebook, failed,
or smoke-mode runs when a full book is asked for are run first (in the asked-for mode; the
figures of a smoke run go to ``build/smoke-figures/``, never over the committed ones).

The pages: the landing page (``notebooks/README.md``), the five lessons in order, and the method
page (``docs/method.md``, which the lessons link to). The figures are the PNG outputs of the
executed cells, copied into ``_images/``. The site works offline, from ``index.html`` in a
browser: the theme is Sphinx's built-in alabaster, MathJax 3 comes from the
``sphinx-mathjax-offline`` package and is copied into ``_static/mathjax/`` (without it, math
shows as TeX source), and the interactive widgets, which need a kernel, show a note instead (no
widget JavaScript is loaded). The only http(s) addresses left are links, such as the papers' arXiv
pages.

The build happens in a hidden folder next to the site's and replaces the site only when it
succeeded, so a failed build leaves the previous site (or none) and never a half-written one.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from coda import cli, workbook

PROJECT_ROOT = workbook.PROJECT_ROOT
TITLE = "The CoDA-Nets workbook"
# MathJax 3 from sphinx-mathjax-offline: the one script Sphinx loads, the fonts it uses, and what it
# loads on demand (TeX extensions, the menu's assistive MathML); not the speech engine (3.9 MB).
MATHJAX_PACKAGE = "sphinx-mathjax-offline"
MATHJAX_PARTS = ("tex-chtml.js", "output/chtml", "input/tex", "a11y/assistive-mml.js", "ui")
WIDGET_NOTE = "(An interactive widget: it needs a running kernel, so open the notebook in JupyterLab to use it.)"

CONF_PY = '''\
# Written by coda.book for one build; the site's configuration.
project = {title!r}
extensions = ["myst_nb"]
nb_execution_mode = "off"  # render the executed copies as they are
nb_ipywidgets_js = {{}}  # no widget JavaScript from a CDN: the widgets show a note instead
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 4  # the lessons link to docs/method.md#section
html_theme = "alabaster"
html_title = project
html_static_path = ["_static"]
html_copy_source = False
html_show_sourcelink = False
html_show_sphinx = False
html_show_copyright = False
html_sidebars = {{"**": ["about.html", "navigation.html", "relations.html", "searchbox.html"]}}
html_theme_options = {{"description": "Convolutional Dynamic Alignment Networks, in five lessons",
                       "page_width": "1180px", "sidebar_width": "230px"}}
mathjax_path = {mathjax!r}
suppress_warnings = ["myst.header", "mystnb.unknown_mime_type"]
'''


# ----- which executed copies can go into the book ---------------------------------------------


def stale_reason(notebook: Path, executed: Path, smoke: bool) -> str | None:
    """Why the executed copy of ``notebook`` cannot go into the book as it is (None: it can).

    Missing, older than the notebook, failed (papermill's record), or a smoke-mode run when a
    full book (``smoke=False``) is asked for; a full run is fine for a smoke book.
    """
    import nbformat

    if not executed.exists():
        return "no executed copy"
    if executed.stat().st_mtime < notebook.stat().st_mtime:
        return "the notebook changed since its run"
    record = nbformat.read(executed, as_version=4).metadata.get("papermill", {})
    if record.get("exception"):
        return "its run failed"
    if not smoke and record.get("parameters", {}).get("SMOKE") is True:
        return "a smoke-mode run, and a full book is asked for"
    return None


def ensure_executed(notebook_dir: Path, executed_dir: Path, smoke: bool, data_dir: str | None = None,
                    rerun: bool = False, log=print) -> list[Path]:
    """The executed copies of the numbered notebooks, running those that are missing or stale first.

    Raises ``RuntimeError`` naming the failing notebook and cell if a run fails.
    """
    notebooks = workbook.find_notebooks(notebook_dir)
    if not notebooks:
        raise ValueError(f"no numbered notebooks in {notebook_dir}")
    todo = {}
    for nb in notebooks:
        reason = "--rerun" if rerun else stale_reason(nb, executed_dir / nb.name, smoke)
        if reason:
            todo[nb.name] = reason
    if todo:
        for name, reason in todo.items():
            log(f"to run: {name} ({reason})")
        fig_dir = executed_dir.parent / "smoke-figures" if smoke else PROJECT_ROOT / "figures"
        results = workbook.run_notebooks(notebook_dir, executed_dir, fig_dir, smoke=smoke, only=list(todo),
                                         data_dir=data_dir, log=log)
        failed = [r for r in results if not r.ok]
        if failed:
            raise RuntimeError(f"{failed[0].name} failed, in {failed[0].error}; executed copy: {failed[0].output}")
    return [executed_dir / nb.name for nb in notebooks]


# ----- the sources of the site ---------------------------------------------------------------


def _mathjax_source() -> Path | None:
    spec = importlib.util.find_spec(MATHJAX_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "static" / "mathjax"


def _book_notebook(executed: Path):
    """The executed copy as the book shows it: widgets replaced by a note, no widget state, and
    papermill's injected-parameters cell hidden (its absolute paths are the building machine's;
    the landing page says when the runs were smoke runs)."""
    import nbformat

    nb = nbformat.read(executed, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            cell.metadata["tags"] = [*tags, "remove-cell"]
        for out in cell.get("outputs", []):
            if "application/vnd.jupyter.widget-view+json" in out.get("data", {}):
                out["data"] = {"text/plain": WIDGET_NOTE}
    nb.metadata.pop("widgets", None)
    return nb


def _landing_page(readme: Path, lessons: Sequence[Path], smoke: bool, with_method: bool) -> str:
    """``notebooks/README.md`` as the site's index: its links re-rooted, a note for a smoke
    build, and the table of contents (the lessons in order, then the method page)."""
    text = readme.read_text(encoding="utf-8") if readme.exists() else f"# {TITLE}\n"
    text = text.replace("](../", "](")  # the README sits in notebooks/, the index at the root
    if smoke:
        note = ("\n```{note}\nThis copy of the book was built from **smoke-mode** runs: short training, few "
                "images. Its numbers and figures show that the lessons run, not the results; "
                "`coda workbook book` builds it from full runs.\n```\n")
        lines = text.split("\n")
        first = next((i for i, line in enumerate(lines) if line.startswith("# ")), -1)
        text = "\n".join(lines[: first + 1] + [note] + lines[first + 1 :])
    entries = [f"notebooks/{p.stem}" for p in lessons] + (["docs/method"] if with_method else [])
    toc = "\n".join(["", "```{toctree}", ":maxdepth: 1", ":caption: Lessons", "", *entries, "```", ""])
    return text.rstrip("\n") + "\n" + toc


def stage_sources(src: Path, executed: Sequence[Path], smoke: bool, readme: Path | None = None,
                  method: Path | None = None) -> None:
    """Write the site's Sphinx sources into ``src``: conf.py, index.md, notebooks/, docs/, _static/."""
    import nbformat

    readme = PROJECT_ROOT / "notebooks" / "README.md" if readme is None else readme
    method = PROJECT_ROOT / "docs" / "method.md" if method is None else method
    (src / "notebooks").mkdir(parents=True)
    (src / "_static").mkdir()
    for path in executed:
        nbformat.write(_book_notebook(path), src / "notebooks" / path.name)
    if method.exists():
        (src / "docs").mkdir()
        shutil.copy2(method, src / "docs" / method.name)
    (src / "index.md").write_text(_landing_page(readme, executed, smoke, method.exists()), encoding="utf-8")
    mathjax = _mathjax_source()
    if mathjax is not None:
        for part in MATHJAX_PARTS:
            source, target = mathjax / part, src / "_static" / "mathjax" / part
            target.parent.mkdir(parents=True, exist_ok=True)
            if source.is_dir():
                shutil.copytree(source, target)
            else:
                shutil.copy2(source, target)
    # without the package, the path leads nowhere and the math stays as TeX source: still offline
    (src / "conf.py").write_text(CONF_PY.format(title=TITLE, mathjax="mathjax/tex-chtml.js"), encoding="utf-8")


# ----- building ------------------------------------------------------------------------------


def build_book(executed: Sequence[Path], out_dir: str | Path, smoke: bool = False, quiet: bool = True,
               log=print) -> Path:
    """Build the site from executed notebooks into ``out_dir`` (replaced only when the build succeeds).

    Sphinx runs in a child process (``python -m sphinx -b html``), with its sources, doctrees
    and myst-nb's output folder in a hidden folder next to ``out_dir``. Raises ``RuntimeError``
    with Sphinx's error output if the build fails; returns ``out_dir``.
    """
    out_dir = Path(out_dir).resolve()
    missing = [str(p) for p in executed if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"executed notebooks not found: {missing}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    try:
        stage_sources(work / "src", [Path(p) for p in executed], smoke)
        html = work / "html"
        command = [sys.executable, "-m", "sphinx", "-b", "html", "-E", "-d", str(work / "doctrees"),
                   str(work / "src"), str(html)] + (["-q"] if quiet else [])
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])))
        proc = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
        if not quiet and proc.stdout:
            log(proc.stdout.rstrip())
        warnings = [line for line in proc.stderr.splitlines() if "WARNING" in line]
        if proc.returncode != 0 or not (html / "index.html").exists():
            raise RuntimeError(f"sphinx failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
        for line in warnings[:20]:
            log(line.replace(str(work / "src") + os.sep, ""))
        if len(warnings) > 20:
            log(f"... and {len(warnings) - 20} more warnings")
        # the switch: the finished site takes the old one's place
        old = work / "previous"
        if out_dir.exists():
            out_dir.rename(old)
        try:
            html.rename(out_dir)
        except OSError:
            if old.exists():
                old.rename(out_dir)
            raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_dir


def external_references(site: str | Path) -> list[str]:
    """The http(s) addresses the site's pages and stylesheets load (scripts, styles, images,
    fonts, CSS imports); links (``<a href>``) are not loads. Empty: the site works offline."""
    site = Path(site)
    found = []
    tag = re.compile(r"<(?:script|link|img|iframe|source)\b[^>]*?\b(?:src|href)=[\"'](https?:)?//", re.I)
    css = re.compile(r"(?:@import\s+|url\()\s*[\"']?(https?:)?//", re.I)
    for path in sorted(site.rglob("*.html")) + sorted(site.rglob("*.css")):
        text = path.read_text(encoding="utf-8", errors="replace")
        for m in (css if path.suffix == ".css" else tag).finditer(text):
            found.append(f"{path.relative_to(site)}: {text[m.start(): m.start() + 120].splitlines()[0]}")
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """``coda workbook book [--smoke] [--out DIR] [--executed DIR] [--rerun] [--data DIR]``."""
    p = argparse.ArgumentParser(
        prog=f"{cli.prog('workbook')} book",
        description="Build the executed notebooks into a static HTML site that works offline (Sphinx + myst-nb); "
        "runs the notebooks first where their executed copies are missing or stale.",
    )
    p.add_argument("--smoke", action="store_true", help="from smoke-mode runs (short; what CI builds)")
    p.add_argument("--out", default=str(PROJECT_ROOT / "build" / "book"), help="the site's folder")
    p.add_argument("--executed", default=str(PROJECT_ROOT / "build" / "notebooks"),
                   help="the executed copies (coda workbook --out); stale ones are rerun there")
    p.add_argument("--notebooks", default=str(PROJECT_ROOT / "notebooks"), help="folder of NN_*.ipynb")
    p.add_argument("--data", help="data folder (DATA_DIR) for the runs")
    p.add_argument("--rerun", action="store_true", help="run every notebook again first")
    p.add_argument("--verbose", action="store_true", help="show Sphinx's progress")
    a = p.parse_args(argv)
    start = time.perf_counter()
    try:
        executed = ensure_executed(Path(a.notebooks), Path(a.executed), a.smoke, a.data, a.rerun)
        site = build_book(executed, a.out, smoke=a.smoke, quiet=not a.verbose)
    except ValueError as err:
        p.error(str(err))
    except (RuntimeError, FileNotFoundError) as err:
        print(f"book not built: {err}", file=sys.stderr)
        return 1
    print(f"the book: {site / 'index.html'} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
