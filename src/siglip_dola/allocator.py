"""glibc malloc settings for the command line: keep freed memory for reuse.

By default glibc hands large freed blocks back to the kernel (blocks above a moving mmap
threshold, and free memory at the top of the heap), so later tensors of those sizes arrive
as fresh pages and every first write to a page is a page fault. How many depends on the
order of earlier allocations and changes from run to run: measured here, a baseline pass
plus an all-layer pass of the bundled model over a 250-image batch took between 0 and
~34,000 faults (a few microseconds each in a VM) per repetition; with these settings, none
after the first but for an occasional heap growth. Fixed thresholds keep those blocks in the
process.

Only the command line calls this (a library should not change its host process's
allocator); ``SIGLIP_DOLA_MALLOC_TUNING=0`` turns it off. Linux with glibc only.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_freed_memory"]

# mallopt parameter numbers from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 << 20  # blocks below this come from the heap (glibc's upper limit)
TRIM_THRESHOLD = 256 << 20  # free memory kept at the top of the heap before trimming


def keep_freed_memory() -> bool:
    """Set fixed glibc mmap/trim thresholds; True when they were applied."""
    if os.environ.get("SIGLIP_DOLA_MALLOC_TUNING", "1") == "0":
        return False
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl has no mallopt thresholds)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    applied = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
    return mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and applied
