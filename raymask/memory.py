"""Process memory settings for the hot path.

Every batch allocates output buffers of a few megabytes. glibc serves allocations above its mmap
threshold (128 KiB, adapting up to 32 MiB) with fresh mmap pages and returns them on free, so each
batch pays one page fault per 4 KiB page it writes: measured here, that doubled the cost of
splicing 100,000 records (100 ms -> 50 ms without it) and quadrupled a plain buffer copy. Raising
the mmap threshold keeps large buffers on the heap, where the next batch reuses pages already
mapped; the trim threshold bounds how much freed memory a process keeps.
"""

from __future__ import annotations

import ctypes
import ctypes.util

__all__ = ["tune_malloc"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_done = False


def tune_malloc(mmap_threshold: int = 1 << 30, trim_threshold: int = 64 << 20) -> bool:
    """Keep buffers up to `mmap_threshold` bytes on the heap and up to `trim_threshold` bytes of
    freed heap for reuse. glibc only; elsewhere a no-op. Returns True when applied."""
    global _done
    if _done:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    )
    _done = ok
    return ok
