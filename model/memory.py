"""Keep freed large blocks in the process's heap for reuse (glibc's malloc).

glibc serves an allocation above its mmap threshold (adjusted at run time, at most 32 MB on
64-bit Linux) with fresh pages from the kernel and hands them back on free, so the next
tensor of that size faults in, and has the kernel zero, every 4 KB page again. A TTO fit of
several people allocates such tensors every step: per-person copies of a paper-sized head's
fc2 are 64 MB for 16 people, and each step's gradients (and a compiled graph's outputs) are
new tensors of that size. Fixing the threshold higher serves them from the heap instead,
where a freed block is reused, and a matching trim threshold keeps the heap from being
returned to the kernel after each step. The process's memory then stays at its peak
instead of shrinking between jobs: `METAHMR_MALLOC_KEEP_MB=0` keeps glibc's defaults.

`keep_freed_blocks` is called once per process, by the worker when it loads its model and
by `metahmr bench tto`, which times what the worker runs. Elsewhere (musl, macOS, Windows)
it does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import platform

log = logging.getLogger(__name__)

# mallopt(3) parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MAX_KEEP_MB = 1023  # mallopt takes an int; twice this (the trim threshold) still fits


def keep_freed_blocks(limit_mb: int) -> bool:
    """Serve allocations of up to `limit_mb` MB from the heap and keep freed memory there
    (glibc's M_MMAP_THRESHOLD and M_TRIM_THRESHOLD). 0 changes nothing. Returns whether
    the setting took effect (False off glibc)."""
    if not 0 <= limit_mb <= MAX_KEEP_MB:
        raise ValueError(f"limit_mb must be between 0 and {MAX_KEEP_MB}, not {limit_mb}")
    if limit_mb == 0 or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    limit = limit_mb << 20
    ok = mallopt(M_MMAP_THRESHOLD, limit) == 1 and mallopt(M_TRIM_THRESHOLD, 2 * limit) == 1
    if not ok:
        log.warning("mallopt refused a %d MB threshold; freed large blocks go back to the kernel",
                    limit_mb)  # fmt: skip
    return ok
