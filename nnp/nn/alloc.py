"""Keep freed tensor memory in the process between steps (glibc malloc settings).

PyTorch's CPU tensors come from malloc. With glibc's defaults, memory freed at
the end of a training step (the autograd graph: (pairs, 3, F) tensors of
~10 MB each for PaiNN) is returned to the kernel ("trimmed"), and the next step
maps it again page by page: ~50,000 page faults and ~0.1 s of kernel time per
PaiNN training step on a 64-molecule CHNO batch, 10-15% of the step. Raising
the trim threshold keeps that memory in the heap for reuse; the mmap threshold
is pinned at glibc's own ceiling (32 MiB), so larger blocks (large systems)
are still mapped and returned on free. Peak memory is unchanged in practice;
memory freed after a step stays with the process (up to the trim threshold).

Set ``NNP_MALLOC_TUNE=0`` to leave malloc as it is. Not glibc (macOS, musl):
nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
TRIM_THRESHOLD = 1 << 30  # bytes kept after frees before the heap top is returned
MMAP_THRESHOLD = 32 << 20  # glibc's largest (DEFAULT_MMAP_THRESHOLD_MAX on 64-bit)

_done: list[bool] = []


def keep_freed_memory() -> bool:
    """Apply the malloc settings once per process; True when they were applied (glibc only)."""
    if _done:
        return _done[0]
    ok = False
    if sys.platform.startswith("linux") and os.environ.get("NNP_MALLOC_TUNE", "1") != "0":
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
            ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
        except (OSError, AttributeError):  # not glibc
            ok = False
    _done.append(ok)
    return ok
