"""Process-wide settings for faster CPU training. Opt-in: nothing here runs at import.

A training step of a CoDA-Net allocates tensors of tens to hundreds of MB (the
``(positions, C_out * r)`` products of every layer and their gradients) and frees them
before the next step. glibc's ``malloc`` serves blocks above 32 MB with a fresh ``mmap``
and returns them to the kernel on ``free``, so every step page-faults all of that memory
in again, which on this project's 2-core machine cost about a quarter of a float32 step
and a third of a bfloat16 step (``python -m benchmarks.bench_layers --keep-freed-memory``
measures it). :func:`keep_freed_memory` tells ``malloc`` to keep freed memory for reuse.
The command-line trainers (``python -m coda.train``, ``python -m coda.sweeps``) call it;
library functions never do, because it changes the whole process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# mallopt parameters, from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Make glibc's ``malloc`` keep freed memory in the process instead of unmapping it.

    Sets ``M_MMAP_MAX = 0`` (every block comes from the heap, none from its own ``mmap``)
    and ``M_TRIM_THRESHOLD = -1`` (the heap is never shrunk; ``man mallopt``), about the
    same as starting Python with ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=<huge>``. The
    process's resident memory then stays at its peak between steps instead of dropping
    back, and a step's large tensors reuse pages that are already mapped.

    Returns
    -------
    True if the settings were applied; False where they do not exist (not Linux, or a C
    library other than glibc), in which case nothing changed.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, -1))
