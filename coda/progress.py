"""Progress bars that show only where they render as bars.

A tqdm bar redraws itself with carriage returns. In a Jupyter kernel (a widget) or on a terminal
that is a bar; written to a file (``nohup python -m coda.train ... > log``) every redraw stays in
the file and buries the lines a reader looks for. :func:`progress_bar` therefore draws only where
:func:`bar_renders`; elsewhere it is the plain iterable, and the caller's per-epoch or per-method
lines are the log.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from tqdm.auto import tqdm


def bar_renders() -> bool:
    """Whether a progress bar shows as a bar here: in a Jupyter kernel or with stderr on a terminal."""
    if "ipykernel" in sys.modules:
        return True
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


def progress_bar(iterable: Iterable, desc: str, enabled: bool = True, **tqdm_kwargs) -> tqdm:
    """``tqdm(iterable, desc=desc, leave=False, ...)``, disabled unless ``enabled`` and
    :func:`bar_renders`. A disabled bar iterates as ``iterable`` does and prints nothing."""
    return tqdm(iterable, desc=desc, disable=not (enabled and bar_renders()), leave=False, **tqdm_kwargs)
