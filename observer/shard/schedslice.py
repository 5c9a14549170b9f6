"""The shard's scheduler slice: ask Linux (6.12 and later) to run it in short slices.

Why: with many clients, every paced wake-up makes hundreds of client processes runnable at once
(observer/shm/writer.py, Pacing). Linux's scheduler (EEVDF) serves runnable tasks by virtual
deadline, which is a task's fair position plus its requested slice; every task asks for the
default slice (0.7-3 ms), so a shard whose timer fires during such a burst of wake-ups waits
behind the clients queued before it, and a feed pass due every millisecond runs late. A task may
ask for a shorter slice for itself, unprivileged (sched_setattr's `sched_runtime` for
SCHED_OTHER, 0.1 to 100 ms): its deadline comes earlier, so it is picked first and, being
shorter, may preempt the running task when it wakes. Its share of the CPU does not change
(that is the weight, from nice, which needs privilege to raise): it only waits less.

Where the kernel has no custom slices (before 6.12) the call is accepted and changes nothing,
or refused; either way the shard runs as before, and a refusal is logged once.
"""

from __future__ import annotations

import ctypes
import logging
import os

from observer.telemetry.logs import log_event

SLICE_NS_MIN = 100_000  # the kernel's clamp: 0.1 ms .. 100 ms
SLICE_NS_MAX = 100_000_000
_SYS_SCHED_SETATTR = 314  # x86-64
_SYS_SCHED_GETATTR = 315

log = logging.getLogger("observer.shard")


class _SchedAttr(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint32), ("sched_policy", ctypes.c_uint32),
                ("sched_flags", ctypes.c_uint64), ("sched_nice", ctypes.c_int32),
                ("sched_priority", ctypes.c_uint32), ("sched_runtime", ctypes.c_uint64),
                ("sched_deadline", ctypes.c_uint64), ("sched_period", ctypes.c_uint64),
                ("sched_util_min", ctypes.c_uint32), ("sched_util_max", ctypes.c_uint32)]


_libc = ctypes.CDLL(None, use_errno=True)


def get_attr() -> _SchedAttr:
    """The calling thread's scheduling attributes (OSError if the kernel refuses)."""
    attr = _SchedAttr()
    attr.size = ctypes.sizeof(attr)
    if _libc.syscall(_SYS_SCHED_GETATTR, 0, ctypes.byref(attr), ctypes.sizeof(attr), 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"sched_getattr: {os.strerror(errno)}")
    return attr


def request_slice(slice_ns: int) -> bool:
    """Ask for `slice_ns` slices for the calling thread, keeping its policy and nice (only
    SCHED_OTHER threads are changed). True if the kernel took it; logs once why not."""
    assert SLICE_NS_MIN <= slice_ns <= SLICE_NS_MAX
    try:
        attr = get_attr()
        if attr.sched_policy != os.SCHED_OTHER:
            return False
        attr.sched_runtime = slice_ns
        if _libc.syscall(_SYS_SCHED_SETATTR, 0, ctypes.byref(attr), 0) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"sched_setattr: {os.strerror(errno)}")
    except OSError as exc:
        log_event(log, "shard_slice_refused", level=logging.WARNING, slice_us=slice_ns // 1000,
                  error=str(exc), note="the shard runs in the default slices")
        return False
    return True
