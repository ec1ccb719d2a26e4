"""Keep freed memory in the process for reuse (glibc), which makes the CPU path ~1.8× faster.

The model's activations are tensors of 50–250 MB. glibc serves allocations that large with
``mmap`` and returns them to the system on free, so every element-wise op of the reference
path first page-faults its whole output into existence; on a 2-core VM that, not arithmetic,
dominates the run time (measured in docs/benchmarks.md). Turning ``mmap`` allocations off and
never trimming the heap lets later ops reuse the same pages. The cost: the resident set stays
at its high-water mark until the process exits, which is why only the command line (a
short-lived process) does this by default; library users can call :func:`tune_allocator`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4


@functools.cache
def tune_allocator() -> bool:
    """Make glibc malloc keep and reuse freed memory; False (and nothing done) elsewhere."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(_M_MMAP_MAX, 0)
    ok &= mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    ok &= mallopt(_M_TOP_PAD, 64 << 20)
    return bool(ok)
