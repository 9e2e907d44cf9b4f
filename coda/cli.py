"""The ``coda`` command: one entry point for the package's command lines.

``coda COMMAND ARGS`` runs ``python -m coda.COMMAND ARGS``; each command keeps its own
options and ``--help``::

    coda train --out runs/NAME ...        # train a model (resumable)
    coda evaluate --model NAME ...        # localisation and pixel removal against post-hoc methods
    coda sweeps train temperature ...     # the ablation sweeps
    coda pretrained list                  # the shipped models
    coda workbook                         # run every notebook, regenerate the figures
    coda workbook student student         # the notebooks without the worked answers, into student/
    coda workbook book                    # the executed notebooks as an HTML site, into build/book/
    coda published list                   # the authors' models (non-commercial research and education only)
"""

from __future__ import annotations

import argparse
import contextvars
import importlib
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

# command -> (module whose main(argv) runs it, one line of help)
COMMANDS = {
    "train": ("coda.train", "train a model with resumable checkpoints"),
    "evaluate": ("coda.evaluate", "localisation and pixel removal of the explanations, against post-hoc methods"),
    "sweeps": ("coda.sweeps", "the temperature, rank and depth sweeps: train, evaluate, tables"),
    "pretrained": ("coda.pretrained", "the shipped models: list, evaluate, export, resave, retire"),
    "workbook": ("coda.workbook", "run the notebooks in order, regenerate the figures; `student`: without answers; "
                 "`book`: the HTML site"),
    "published": ("coda.published", "the authors' published models: list, download (non-commercial use only)"),
    "recipes": ("coda.recipes", "the reproduction's recipe study: train, save, status, table, figure"),
    "depth": ("coda.depth", "interpretable depth, the ResNet-20 hybrids: status, evaluate, table, figure"),
}
# the command the coda command is running (None under python -m coda.X)
_RUNNING: contextvars.ContextVar[str | None] = contextvars.ContextVar("coda_command", default=None)


def prog(module: str) -> str:
    """The program name a module's usage line shows: ``coda X`` when the ``coda`` command runs it,
    else ``python -m coda.X``. ``module`` is the module's name (``"coda.train"``) or its command."""
    command = module.removeprefix("coda.")
    return f"coda {command}" if _RUNNING.get() == command else f"python -m coda.{command}"


DATA_PLACEHOLDER = "<data folder>"


def git_output(cwd: str | Path, *args: str) -> str | None:
    """The stripped output of ``git -C cwd ARGS``; ``None`` if it is empty, git fails (not a
    repository, an unknown revision, ...), git is missing or it takes over a minute."""
    try:
        done = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return (done.stdout.strip() or None) if done.returncode == 0 else None


def recorded_command(module: str, argv: Sequence[str]) -> str:
    """The command line a results file records: ``python -m MODULE ARGS``, with the value of
    ``--data`` written as ``<data folder>``: it is a folder of the machine that ran it, which a
    reader cannot follow (they point ``--data`` or ``$CODA_DATA`` at their own copy)."""
    words, hide = [], False
    for word in argv:
        if hide:
            words.append(DATA_PLACEHOLDER)
        elif word.startswith("--data="):
            words.append("--data=" + DATA_PLACEHOLDER)
        else:
            words.append(shlex.quote(word))
        hide = word == "--data"
    return " ".join(["python", "-m", module, *words])


def parser() -> argparse.ArgumentParser:
    """The top-level parser: one sub-command per module; everything after it goes to that module."""
    p = argparse.ArgumentParser(
        prog="coda",
        description="CoDA-Nets workbook: train, evaluate, sweep, ship and teach.",
        epilog="`coda COMMAND --help` shows a command's options; `coda COMMAND ...` is the same as "
        "`python -m coda.COMMAND ...`.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (_, text) in COMMANDS.items():
        sub.add_parser(name, help=text, description=text, add_help=False)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``coda COMMAND ARGS``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    p = parser()
    if not argv or argv[0] not in COMMANDS:
        p.parse_args(argv)  # prints the help or the error and exits
    module = importlib.import_module(COMMANDS[argv[0]][0])
    token = _RUNNING.set(argv[0])
    try:
        status = module.main(argv[1:])
    finally:
        _RUNNING.reset(token)
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    from coda import cli  # the module whose prog() the commands read, not this __main__ copy

    sys.exit(cli.main())
