"""Keep glibc from holding freed encoder activations: large numpy arrays (image crops, Conformer
blocks, upcast weight copies) are allocated and freed on every request. glibc serves blocks above
its mmap threshold with mmap and returns them to the system on free, but it raises that threshold
(up to 32 MiB) each time such a block is freed, after which same-sized blocks come from the heap
and stay in the resident set. Fixing the threshold (what MALLOC_MMAP_THRESHOLD_ does) keeps it at
1 MiB. Measured: serving text, a 30 s clip, a 1000x666 image and image+audio in one process peaked
at 6.01 GiB without it and 5.76 GiB with it (scripts/bench_transcribe.py)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_MMAP_THRESHOLD = -3   # glibc's mallopt parameter number
THRESHOLD_BYTES = 1 << 20
_done = False


def fix_mmap_threshold() -> bool:
    """Once per process, on glibc only (elsewhere, or when MALLOC_MMAP_THRESHOLD_ is set, nothing);
    True if the threshold is now fixed."""
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux") or "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        _done = bool(libc.mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES))
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    return _done
