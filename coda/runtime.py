"""Process-wide C-allocator setting for CPU benchmarks. Opt-in: nothing here runs at import.

glibc's ``malloc`` serves every block above 32 MB with a fresh ``mmap`` and unmaps it again
on ``free``, so a training step whose temporaries are hundreds of MB page-faults all of that
memory in again at every step. The straightforward (materialised) CoDA layer builds
``C_out * C_in * k^2`` weights per position and spends most of its step on exactly that:
:func:`keep_freed_memory` makes it 2-3x faster on this project's machine, at about twice
the peak memory (``python -m benchmarks.bench_layers --keep-freed-memory``). The package's
own layer keeps its temporaries small (``coda.dau.dau_conv2d`` works on groups of images)
and gains little from it, so the package never calls it; the benchmark offers it so that
both layers can be compared with and without it.
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
