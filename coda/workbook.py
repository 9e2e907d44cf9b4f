"""Run the workbook: every ``notebooks/NN_*.ipynb`` in order, through papermill.

::

    python -m coda.workbook                      # all notebooks, full mode
    python -m coda.workbook --smoke              # short runs (what CI does)
    python -m coda.workbook --only 01 03 --out build/notebooks --fig-dir figures
    python -m coda.workbook student student      # the notebooks without the worked answers
    python -m coda.workbook book --smoke         # the executed notebooks as an HTML site, build/book/

Executed copies go to ``--out`` (an ignored build folder; the committed notebooks stay
without outputs); figures go to ``--fig-dir``. The notebooks get the parameters ``SMOKE``
(when ``--smoke``/``--full`` is given; otherwise they default to the ``CI`` environment
variable), ``FIG_DIR``, ``DATA_DIR`` (when given) and any ``-p NAME VALUE``. A failing
notebook is reported with its failing cell and error, and the command exits with status 1.
``student OUT_DIR`` writes the student version instead (:mod:`coda.course`): the notebooks
without the worked answers of their exercises, outputs cleared. ``book`` builds the executed
copies into a static HTML site (:mod:`coda.book`), running the notebooks first where needed.

The module also holds what the notebooks share that is not the lesson: :func:`start_lesson`,
the set-up cell after every parameters cell (smoke mode, seeds, device, figure style), and
:func:`text_table` for printing result rows.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import re
import sys
import time
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from coda import cli

PROJECT_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_PATTERN = re.compile(r"^(\d\d)_.+\.ipynb$")
KERNEL = "python3"


# ----- helpers for the notebooks ------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (for notebooks, not library code)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(device: str | None = "auto"):
    """``"auto"``/None -> CUDA if available, else CPU; anything else -> ``torch.device(device)``."""
    import torch

    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class Lesson(typing.NamedTuple):
    """What a lesson's set-up cell derives from its parameters (see :func:`start_lesson`)."""

    smoke: bool
    device: object  # torch.device
    fig_dir: Path


def start_lesson(smoke: bool | None, seed: int, device: str | None = "auto",
                 fig_dir: str | Path = "../figures") -> Lesson:
    """The set-up every lesson runs right after its parameters cell.

    Parameters
    ----------
    smoke : the SMOKE parameter; None means True when the ``CI`` environment variable is
        "true" (papermill passes an explicit bool).
    seed : seeds Python's, NumPy's and torch's global generators (:func:`seed_everything`).
    device : "auto"/None, "cpu", "cuda", ... (:func:`resolve_device`).
    fig_dir : where the lesson saves its figures.

    Returns
    -------
    ``Lesson(smoke, device, fig_dir)``, to unpack: ``SMOKE, device, fig_dir = start_lesson(...)``.
    Also applies the figure style (:func:`coda.plotting.use_style`), an explicit call so that
    importing the package never changes matplotlib's settings.
    """
    from coda import plotting

    if smoke is None:
        smoke = os.environ.get("CI", "").lower() == "true"
    seed_everything(seed)
    plotting.use_style()
    return Lesson(bool(smoke), resolve_device(device), Path(fig_dir))


def text_table(rows: Sequence[Mapping], columns: Sequence[str]) -> str:
    """Rows of results as an aligned plain-text table, one line per row under a header.

    Text columns are left-aligned, numbers right-aligned; ints get thousands separators,
    floats three decimals (``:g`` from 10 on), None prints as "-" (a metric that does not
    apply). The column's kind is read from the first row.
    """
    table = [list(columns)] + [[_cell_text(r[c]) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    left = [isinstance(rows[0][c], str) for c in columns] if rows else [True] * len(columns)
    return "\n".join("  ".join(v.ljust(w) if lj else v.rjust(w) for v, w, lj in zip(line, widths, left, strict=True))
                     for line in table)


def _cell_text(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, (str, bool)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:g}"


def resolve_model(name: str | None = None, device=None) -> tuple[object, str]:
    """The model a notebook's ``MODEL`` parameter names, in eval mode on ``device``, and its name.

    name : a shipped model (:func:`coda.list_pretrained`, loaded by :func:`coda.load_pretrained`;
        None: the default one) or one of the authors' published models
        (:func:`coda.published.list_published`, loaded by :func:`coda.load_published`: downloaded
        on first use, so the first time needs a network; non-commercial research and education only).

    Raises ``ValueError`` listing both sets of names if ``name`` is neither (and
    ``FileNotFoundError`` / ``ValueError`` if no shipped model is available for None).
    """
    from coda import pretrained, published

    if name is None:
        name = pretrained.default_name()
    shipped = pretrained.list_pretrained()
    if name in shipped:
        model = pretrained.load_pretrained(name, device=device)
    elif name in published.list_published():
        model = published.load_published(name).to(device)
    else:
        raise ValueError(f"unknown model {name!r}: expected a shipped model, one of {shipped}, or one of the "
                         f"authors' published models, one of {published.list_published()}")
    return model.eval(), name


def load_shipped_model(device=None, name: str | None = None) -> tuple[object | None, dict | None, str]:
    """The default shipped model (:mod:`coda.pretrained`), if there is one, or the model ``name`` names.

    name : None (the default shipped model), or any name :func:`resolve_model` takes; an
        explicitly named model that cannot be loaded raises (unknown name, no network, ...).

    Returns
    -------
    ``(model, entry, message)``: the model in eval mode and its manifest entry (config,
    training history, test accuracy, ...; None for a published model), or
    ``(None, None, message)`` when no default shipped model is available; ``message`` says
    which, for the notebook's output.
    """
    from coda import pretrained

    try:
        model, name = resolve_model(name, device)
    except (ImportError, FileNotFoundError, ValueError) as err:
        if name is not None:
            raise
        return None, None, f"No shipped model is available ({type(err).__name__}: {err})."
    entry = pretrained.read_manifest()["models"].get(name)
    if entry is None:
        return model, None, f"Loaded the authors' published model {name!r} (non-commercial research and education only)."
    return model, entry, f"Loaded the shipped model {name!r}."


# ----- finding and running notebooks ----------------------------------------------------------


@dataclasses.dataclass
class NotebookResult:
    """The outcome of one notebook run.

    name : file name; output : path of the executed copy; seconds : wall time;
    error : None on success, else a one-paragraph description naming the failing cell.
    """

    name: str
    output: Path
    seconds: float
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def find_notebooks(notebook_dir: str | Path = PROJECT_ROOT / "notebooks",
                   only: Sequence[str] | None = None) -> list[Path]:
    """The numbered notebooks ``NN_*.ipynb`` of ``notebook_dir``, in order.

    only : keep notebooks whose number (``"01"``) or file name (with or without
        ``.ipynb``) is listed; a name that matches nothing raises ``ValueError``.
    """
    paths = sorted(p for p in Path(notebook_dir).iterdir() if NOTEBOOK_PATTERN.match(p.name))
    if only is None:
        return paths
    keys = {str(k).removesuffix(".ipynb") for k in only}
    chosen = [p for p in paths if p.stem in keys or p.name[:2] in keys]
    unknown = keys - {p.stem for p in chosen} - {p.name[:2] for p in chosen}
    if unknown:
        names = ", ".join(p.name for p in paths) or "none"
        raise ValueError(f"no notebook matches {sorted(unknown)} in {notebook_dir} (found: {names})")
    return chosen


@contextlib.contextmanager
def _kernel_environment(extra_path: Path) -> Iterator[None]:
    """The kernels' environment (inherited from ``os.environ``, restored afterwards): the project
    on ``PYTHONPATH``, so ``import coda`` needs no install, and ``TQDM_DISABLE=1``, so that a
    progress bar whose ``disable`` is not given explicitly stays out of the executed copies."""
    old = {k: os.environ.get(k) for k in ("PYTHONPATH", "TQDM_DISABLE")}
    os.environ["PYTHONPATH"] = os.pathsep.join([str(extra_path)] + ([old["PYTHONPATH"]] if old["PYTHONPATH"] else []))
    os.environ["TQDM_DISABLE"] = "1"
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# A tqdm bar as text: "desc:  40%|####      | 2/5 [00:01<00:01, 2.0it/s]", or "12it [00:01, ...]" without a total.
_TQDM_BAR = re.compile(r"\d+%\|.*\|\s*[\d.]+[kMGT]?/[\d.?]+[kMGT]?\s*\[|\b[\d.]+[kMGT]?it \[[\d:]+")
_WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def _without_bars(text: str) -> str:
    """``text`` less its tqdm bars: each line shows what a terminal would after its last ``\\r``,
    bars dropped; a line that only ever held bars (or the blanks tqdm clears them with) goes."""
    lines = []
    for line in text.split("\n"):
        parts = line.split("\r")
        kept = [p for p in parts if not _TQDM_BAR.search(p)]
        if len(kept) == len(parts):
            lines.append(line)
        elif any(p.strip() for p in kept):
            lines.append([p for p in kept if p.strip()][-1])
    return "\n".join(lines)


def strip_progress_bars(nb) -> int:
    """Remove tqdm progress bars from an executed notebook (in place); returns how many outputs changed.

    In JupyterLab a bar is a live widget, and with ``leave=False`` it goes once done; an executed
    copy keeps only the widget's text at its first display (``epoch 1/2:   0%| | 0/78``), or the
    bar's ``\\r``-separated updates in a stream. Both go; the lines printed beside them (the
    trainer's one line per epoch) stay. Widget models only those bars used leave the metadata.
    """
    changed = 0
    for cell in nb.cells:
        outputs = []
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if _WIDGET_VIEW in data and _TQDM_BAR.search("".join(data.get("text/plain", ""))):
                changed += 1
                continue
            if out.get("output_type") == "stream":
                text = _without_bars(out.text)
                if text != out.text:
                    changed += 1
                    if not text.strip():
                        continue
                    out.text = text
            outputs.append(out)
        if "outputs" in cell:
            cell.outputs = outputs
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state")
    if changed and state:
        used = {o["data"][_WIDGET_VIEW]["model_id"] for c in nb.cells for o in c.get("outputs", [])
                if _WIDGET_VIEW in o.get("data", {})}
        todo = list(used)
        while todo:  # models reachable from a remaining view, through "IPY_MODEL_<id>" references
            for ref in re.findall(r"IPY_MODEL_(\w+)", json.dumps(state.get(todo.pop(), {}))):
                if ref not in used:
                    used.add(ref)
                    todo.append(ref)
        for model_id in set(state) - used:
            del state[model_id]
        if not state:
            del nb.metadata["widgets"]
    return changed


def describe_error(err: Exception, source_cells: Sequence[str] = ()) -> str:
    """A readable description of a papermill failure: which cell, which error.

    ``source_cells`` are the sources of the *committed* notebook's cells, used to give the
    cell's number there (papermill's own index counts its injected parameters cell).
    """
    from papermill.exceptions import PapermillExecutionError

    if not isinstance(err, PapermillExecutionError):
        return f"{type(err).__name__}: {err}"
    number = next((i for i, s in enumerate(source_cells) if s == err.source), None)
    where = f"cell {number}" if number is not None else f"cell index {err.cell_index}"
    first_line = next((line for line in err.source.splitlines() if line.strip()), "")
    return (f"{where} (In [{err.exec_count}]), starting {first_line.strip()!r}: "
            f"{err.ename}: {err.evalue}".rstrip(": "))


def run_notebooks(
    notebook_dir: str | Path = PROJECT_ROOT / "notebooks",
    out_dir: str | Path = PROJECT_ROOT / "build" / "notebooks",
    fig_dir: str | Path = PROJECT_ROOT / "figures",
    smoke: bool | None = None,
    only: Sequence[str] | None = None,
    data_dir: str | Path | None = None,
    parameters: Mapping[str, object] | None = None,
    cell_timeout: float | None = None,
    stop_on_error: bool = True,
    progress: bool = False,
    log: Callable[[str], None] | None = print,
) -> list[NotebookResult]:
    """Execute the numbered notebooks in order with papermill (kernel ``python3``).

    The kernels run with ``TQDM_DISABLE=1``, and the executed copies are written without the
    progress bars that were enabled anyway (:func:`strip_progress_bars`): the trainer's bar shows
    live in JupyterLab, and its per-epoch line is what an executed copy keeps.

    Parameters
    ----------
    notebook_dir : where the ``NN_*.ipynb`` are; each runs with this as working directory.
    out_dir : where the executed copies are written (same file names).
    fig_dir : injected as ``FIG_DIR`` (absolute).
    smoke : injected as ``SMOKE`` unless None (then each notebook's default applies: the
        ``CI`` environment variable).
    only : numbers or names of the notebooks to run (see :func:`find_notebooks`).
    data_dir : injected as ``DATA_DIR`` unless None.
    parameters : further parameters to inject.
    cell_timeout : seconds any one cell may run (None: no limit).
    stop_on_error : skip the remaining notebooks after a failure.
    progress : show papermill's per-cell progress bar.
    log : called with one line per notebook (None: silent).

    Returns
    -------
    One :class:`NotebookResult` per notebook run, in order.
    """
    import nbformat
    import papermill as pm

    say = log or (lambda _line: None)
    paths = find_notebooks(notebook_dir, only)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {"FIG_DIR": str(Path(fig_dir).resolve())}
    if smoke is not None:
        params["SMOKE"] = bool(smoke)
    if data_dir is not None:
        params["DATA_DIR"] = str(Path(data_dir).resolve())
    params.update(parameters or {})
    results = []
    with _kernel_environment(PROJECT_ROOT):
        for i, path in enumerate(paths, 1):
            out = out_dir / path.name
            say(f"[{i}/{len(paths)}] {path.name} ...")
            start = time.perf_counter()
            error = None
            try:
                pm.execute_notebook(
                    str(path), str(out), parameters=params, kernel_name=KERNEL, cwd=str(path.parent),
                    progress_bar=progress, execution_timeout=cell_timeout,
                )
            except Exception as err:  # papermill raises PapermillExecutionError and others
                sources = [c.source for c in nbformat.read(path, as_version=4).cells]
                error = describe_error(err, sources)
            if out.exists():
                executed = nbformat.read(out, as_version=4)
                if strip_progress_bars(executed):
                    nbformat.write(executed, out)
            seconds = time.perf_counter() - start
            results.append(NotebookResult(path.name, out, seconds, error))
            if error is None:
                say(f"[{i}/{len(paths)}] {path.name} ok in {seconds:.1f} s")
            else:
                say(f"[{i}/{len(paths)}] {path.name} FAILED after {seconds:.1f} s in {error}\n"
                    f"    the executed copy with the traceback: {out}")
                if stop_on_error:
                    break
    return results


def format_summary(results: Sequence[NotebookResult]) -> str:
    """A plain-text table: notebook, status, wall time, and the total."""
    width = max([len("notebook")] + [len(r.name) for r in results])
    lines = [f"{'notebook':<{width}}  status  wall time", f"{'-' * width}  ------  ---------"]
    for r in results:
        lines.append(f"{r.name:<{width}}  {'ok' if r.ok else 'FAILED':<6}  {r.seconds:8.1f} s")
    lines.append(f"{'total':<{width}}  {'':<6}  {sum(r.seconds for r in results):8.1f} s")
    return "\n".join(lines)


def _parse_value(text: str) -> object:
    """A ``-p`` value: JSON if it parses (numbers, true/false, null, lists), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["student"]:
        from coda import course

        return course.main(argv[1:])
    if argv[:1] == ["book"]:
        from coda import book

        return book.main(argv[1:])
    p = argparse.ArgumentParser(prog=cli.prog("workbook"), description=__doc__.split("\n\n")[0],
                                epilog="`student OUT_DIR` as the first argument writes the student version of "
                                "the notebooks instead (without the worked answers; see its --help); `book` builds the executed "
                                "notebooks into a static HTML site in build/book/ (coda.book; see its --help).")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--smoke", dest="smoke", action="store_true", default=None,
                      help="short runs (SMOKE=True), as in CI")
    mode.add_argument("--full", dest="smoke", action="store_false", help="full runs (SMOKE=False)")
    p.add_argument("--only", nargs="+", metavar="NN", help="run only these notebooks (e.g. 01 03)")
    p.add_argument("--notebooks", default=str(PROJECT_ROOT / "notebooks"), help="folder of NN_*.ipynb")
    p.add_argument("--out", default=str(PROJECT_ROOT / "build" / "notebooks"), help="executed copies")
    p.add_argument("--fig-dir", default=str(PROJECT_ROOT / "figures"), help="figure folder (FIG_DIR)")
    p.add_argument("--data", help="data folder (DATA_DIR; default: the notebooks' own default)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="another parameter to inject (VALUE parsed as JSON if possible)")
    p.add_argument("--cell-timeout", type=float, help="seconds one cell may run")
    p.add_argument("--keep-going", action="store_true", help="run the remaining notebooks after a failure")
    p.add_argument("--no-progress", action="store_true", help="no per-cell progress bar")
    p.add_argument("--record-times", action="store_true",
                   help="after a successful run of every lesson, store their wall times for this kind of machine in "
                   "results/workbook/lesson_times.json (coda.lesson_times; needs --full or --smoke, the lessons' default "
                   "parameters, and an idle machine)")
    a = p.parse_args(argv)
    if a.record_times and (a.smoke is None or a.only or a.parameter):
        p.error("--record-times needs --full or --smoke, every lesson (no --only) and their defaults (no -p)")
    try:
        results = run_notebooks(
            a.notebooks, a.out, a.fig_dir, smoke=a.smoke, only=a.only, data_dir=a.data,
            parameters={k: _parse_value(v) for k, v in a.parameter}, cell_timeout=a.cell_timeout,
            stop_on_error=not a.keep_going, progress=not a.no_progress,
        )
    except ValueError as err:
        p.error(str(err))
    print()
    print(format_summary(results))
    failed = [r for r in results if not r.ok]
    for r in failed:
        print(f"\nFAILED: {r.name}, {r.error}\n  executed copy: {r.output}", file=sys.stderr)
    if a.record_times and not failed:
        from coda import lesson_times

        device = resolve_device().type  # the lessons' default DEVICE, "auto"
        lesson_times.record_times(results, smoke=a.smoke, device=device)
        print(f"recorded the lessons' wall times ({lesson_times.machine_kind(device)}) in {lesson_times.TIMES_FILE}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
