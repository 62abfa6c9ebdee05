"""Keep freed memory in the process: glibc's defaults cost the miners a quarter of their time.

Each image makes and frees arrays of tens to hundreds of MB (full-resolution region masks and
sums, crop batches). glibc serves an allocation above its mmap threshold (at most 32 MB, even
after its dynamic adjustment) with a fresh ``mmap`` and returns it to the kernel when freed,
so the next image page-faults every page in again: on 48 coco_mini images ``mine fem
--workers 2`` took 10.6 million minor page faults and 24 s of system time in 58 s of wall
time. Raising the mmap threshold to 1 GB, and keeping up to 2 GB of free heap
(``M_TRIM_THRESHOLD``, ``M_TOP_PAD``), reuses that memory instead: 1.5 million faults, 4 s of
system time, 38 s of wall time (``benchmarks/README.md``, "Mining speed"), for a peak resident
size about 10% higher. Outputs do not change (only where memory comes from does).

Set ``WEAKPASTE_SYSTEM_MALLOC=1`` to keep glibc's defaults (a machine short of memory). On
another C library (musl, macOS) nothing is done.
"""

from __future__ import annotations

import ctypes
import os
import sys

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_SETTINGS = ((_M_MMAP_THRESHOLD, 1 << 30), (_M_TRIM_THRESHOLD, (1 << 31) - 1),
             (_M_TOP_PAD, 256 << 20))
OPT_OUT = "WEAKPASTE_SYSTEM_MALLOC"


def keep_freed_memory() -> bool:
    """Set glibc's allocator to reuse freed memory (this process and those it forks later).

    Returns:
        True when the settings took effect; False on another C library, or when the
        environment variable ``WEAKPASTE_SYSTEM_MALLOC`` is set to anything but "" or "0".
    """
    if os.environ.get(OPT_OUT, "") not in ("", "0") or not sys.platform.startswith("linux"):
        return False
    # The symbols already loaded into this process (libc among them): no library search,
    # which may run ``ldconfig`` on every command's start-up.
    libc = ctypes.CDLL(None)
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None or not hasattr(libc, "gnu_get_libc_version"):  # musl has no mallopt
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return all(mallopt(param, value) == 1 for param, value in _SETTINGS)
