"""The course apparatus: worked answers between solution markers, and the student version without them.

Every lesson ends with its exercises and, after them, one worked answer per exercise: a markdown
cell "**Answer N.**" with the reasoning and, where the exercise computes or tries something, code
cells that do it. The answers sit between nbgrader-style solution markers, each marker on a line
of its own::

    ### BEGIN SOLUTION            (code cells)
    ...
    ### END SOLUTION

    <!-- BEGIN SOLUTION -->       (markdown cells)
    ...
    <!-- END SOLUTION -->

The student version replaces every marked block, markers included: in a code cell by
``# YOUR CODE HERE`` and ``raise NotImplementedError()`` (indented like the BEGIN line), as
nbgrader does; in a markdown cell by "_Your answer here._". Everything else is kept; outputs
and execution counts are cleared::

    coda workbook student OUT_DIR              # = python -m coda.workbook student OUT_DIR
    coda workbook student OUT_DIR --only 01    # one lesson

Put ``OUT_DIR`` next to ``notebooks/`` (e.g. ``student/`` in the project), so that the lessons'
relative paths (``../figures``, ``../results``) still lead somewhere. Only ``json``/``nbformat``
are used, not nbgrader.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Sequence
from pathlib import Path

from coda import cli
from coda.checkpoint import write_text

MARKERS = {
    "code": ("### BEGIN SOLUTION", "### END SOLUTION"),
    "markdown": ("<!-- BEGIN SOLUTION -->", "<!-- END SOLUTION -->"),
}
CODE_STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")
MARKDOWN_STUB = "_Your answer here._"


def solution_blocks(source: str, cell_type: str, where: str = "cell") -> list[tuple[int, int]]:
    """The marked blocks of one cell's source: ``(begin line, end line)`` pairs, 0-based, markers included.

    ``where`` names the cell in error messages ("01_x.ipynb, cell 12"). Raises ``ValueError`` for
    a BEGIN without its END, an END without a BEGIN, a BEGIN inside a block, or the other cell
    type's markers (a code cell's ``### BEGIN SOLUTION`` in a markdown cell, or the reverse).
    A raw cell has no blocks.
    """
    if cell_type not in MARKERS:
        return []
    begin, end = MARKERS[cell_type]
    wrong = MARKERS["markdown" if cell_type == "code" else "code"]
    blocks, start = [], None
    for number, line in enumerate(source.splitlines()):
        text = line.strip()
        if text in wrong:
            raise ValueError(f"{where}: line {number + 1} has the marker {text!r}, which is for "
                             f"{'markdown' if cell_type == 'code' else 'code'} cells; a {cell_type} cell uses "
                             f"{begin!r} / {end!r}")
        if text == begin:
            if start is not None:
                raise ValueError(f"{where}: {begin!r} on line {number + 1} inside the block opened on "
                                 f"line {start + 1}")
            start = number
        elif text == end:
            if start is None:
                raise ValueError(f"{where}: {end!r} on line {number + 1} without a {begin!r} before it")
            blocks.append((start, number))
            start = None
    if start is not None:
        raise ValueError(f"{where}: {begin!r} on line {start + 1} has no {end!r}")
    return blocks


def strip_solutions(source: str, cell_type: str, where: str = "cell") -> str:
    """``source`` with every marked block replaced by the student's placeholder (see the module doc)."""
    blocks = solution_blocks(source, cell_type, where)
    if not blocks:
        return source
    lines = source.splitlines()
    out, previous = [], 0
    for first, last in blocks:
        out += lines[previous:first]
        if cell_type == "code":
            indent = lines[first][: len(lines[first]) - len(lines[first].lstrip())]
            out += [indent + stub for stub in CODE_STUB]
        else:
            out.append(MARKDOWN_STUB)
        previous = last + 1
    out += lines[previous:]
    return "\n".join(out) + ("\n" if source.endswith("\n") else "")


def student_notebook(nb, name: str = "notebook"):
    """A copy of the notebook ``nb`` (nbformat v4) without solutions, outputs or execution counts.

    name : the file's name, for error messages.
    """
    student = copy.deepcopy(nb)
    for number, cell in enumerate(student.cells):
        cell.source = strip_solutions(cell.source, cell.cell_type, f"{name}, cell {number}")
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
            for key in ("execution", "papermill"):  # what an executed copy records per cell
                cell.metadata.pop(key, None)
    return student


def write_student_version(out_dir: str | Path, notebook_dir: str | Path | None = None,
                          only: Sequence[str] | None = None) -> list[Path]:
    """Write the student version of the numbered notebooks of ``notebook_dir`` to ``out_dir``.

    Parameters
    ----------
    out_dir : the folder for the copies (created; the same file names); it must not be
        ``notebook_dir`` itself.
    notebook_dir : the lessons (default: the project's ``notebooks/``).
    only : numbers or names of the notebooks to convert (see :func:`coda.workbook.find_notebooks`).

    Every notebook is read and converted before the first file is written, each file atomically:
    a notebook with an unbalanced marker stops the command with nothing written. Raises
    ``ValueError`` for a missing folder, a folder without numbered notebooks, an ``out_dir`` that
    is the notebooks' folder, or a marker problem (naming the file and the cell).

    Returns
    -------
    The paths written, in order.
    """
    import nbformat

    from coda import workbook

    notebook_dir = Path(notebook_dir) if notebook_dir is not None else workbook.PROJECT_ROOT / "notebooks"
    out_dir = Path(out_dir)
    if not notebook_dir.is_dir():
        raise ValueError(f"no notebook folder {notebook_dir}")
    if out_dir.resolve() == notebook_dir.resolve():
        raise ValueError(f"the student version must go to another folder than the notebooks ({notebook_dir})")
    paths = workbook.find_notebooks(notebook_dir, only)
    if not paths:
        raise ValueError(f"no numbered notebooks (NN_*.ipynb) in {notebook_dir}")
    converted = [(out_dir / p.name, student_notebook(nbformat.read(p, as_version=4), p.name)) for p in paths]
    for path, nb in converted:
        write_text(nbformat.writes(nb) + "\n", path)
    return [path for path, _ in converted]


def main(argv: Sequence[str] | None = None) -> int:
    """``coda workbook student OUT_DIR [--notebooks DIR] [--only NN ...]``."""
    p = argparse.ArgumentParser(
        prog=f"{cli.prog('workbook')} student",
        description="Write the student version of the notebooks: the worked answers removed, outputs cleared.",
    )
    p.add_argument("out", metavar="OUT_DIR", help="folder for the student notebooks (e.g. student/ in the project)")
    p.add_argument("--notebooks", help="folder of the NN_*.ipynb with answers (default: the project's notebooks/)")
    p.add_argument("--only", nargs="+", metavar="NN", help="convert only these notebooks (e.g. 01 03)")
    a = p.parse_args(argv)
    try:
        written = write_student_version(a.out, a.notebooks, a.only)
    except ValueError as err:
        p.error(str(err))
    for path in written:
        print(f"wrote {path}")
    return 0
