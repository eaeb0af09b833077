"""glibc's malloc set up for a long run over a million files: freed buffers go back to the system; and
the run's objects left to the process's end (`leave_to_exit`).

By default glibc serves a request of 128 KiB or more with its own mmap, returned when freed, but raises
that threshold (up to 32 MiB) each time such a block is freed: after the first large array or buffer of
a run is freed, every later one up to that size comes from the heap instead, and a freed block below a
block still in use stays resident. At a million Debian files that kept ~60 MB more after the scan than
what was in use (measured: 276 against 217 MB). `bound_heap` fixes the threshold at 128 KiB (and the
trim threshold at twice that), as the environment's `MALLOC_MMAP_THRESHOLD_` would.

It is called at the CLI's edge (`invoke release`), for this process only: hashing workers start from a
fresh forkserver. Nothing is changed when the operator set any `MALLOC_*_` variable, or off glibc.
"""

from __future__ import annotations

import ctypes
import gc
import os
from collections.abc import Mapping

MMAP_THRESHOLD = 128 * 1024  # glibc's own starting value, kept fixed
_M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3


def bound_heap(environ: Mapping[str, str] = os.environ) -> bool:
    """Fix glibc's mmap and trim thresholds for this process; whether it was done."""
    if any(name.startswith("MALLOC_") and name.endswith("_") for name in environ):
        return False  # the operator's own tuning wins
    try:
        # glibc names itself here; asked this way, not by platform.libc_ver() (which reads the Python
        # executable) nor ctypes.util.find_library (which runs `ldconfig -p`): ~10 ms of every run's start
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc "):
            return False
    except (ValueError, OSError):
        return False
    try:
        libc = ctypes.CDLL(None)  # the process's own symbols: glibc's, the C library it runs on
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 * MMAP_THRESHOLD))


def leave_to_exit() -> None:
    """Once the run's report is out: what is left of the run's objects goes with the process, not through
    the interpreter's last collection, which walks every object still tracked (~40 ms at the end of a
    3,000-file full build). Objects are still freed when their count drops; atexit handlers (temporary
    directories' cleanup included) still run."""
    gc.freeze()
