"""Give the heap's free memory back to the system once a burst of allocation is over.

Why: a feed syncing many books at once parses REST snapshots (a 500-level body is a few
hundred KiB of Python lists while it lives) and buffers frames; glibc's malloc keeps the freed
pages in its arenas, so RSS stayed at its peak for the life of the process (issue 13: 319 MB
at 200 books, never returned). `malloc_trim(0)` returns free pages at the top of each arena
and, since glibc 2.8, whole free pages inside them (madvise), which is where CPython's freed
arenas of small objects end up.

Called by the session driver when a feed's last waiting book went live, so at most once per
sync burst, never per message. Elsewhere than glibc (musl, macOS) it does nothing and says so
through its return value.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_malloc_trim = None
try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    _malloc_trim = _libc.malloc_trim
    _malloc_trim.argtypes = (ctypes.c_size_t,)
    _malloc_trim.restype = ctypes.c_int
except (OSError, AttributeError):  # not glibc: nothing to trim with
    _malloc_trim = None

AVAILABLE = _malloc_trim is not None


def trim() -> bool:
    """Return free heap memory to the system. True if any was returned; False if none was,
    or if this libc has no malloc_trim."""
    if _malloc_trim is None:
        return False
    return bool(_malloc_trim(0))
