"""Process attributes our processes set on themselves: prctl(2) calls, in one place.

Why these three:

- `forbid_inspection()` (PR_SET_DUMPABLE 0). The supervisor, the zygote and the shards hold the
  shard eventfds and a writable mapping of the segment. Without yama (not on every kernel, not
  on ours), any process of the same uid may ptrace them, read or write their memory through
  /proc/PID/mem or process_vm_writev, open their fds through /proc/PID/fd, or copy them with
  pidfd_getfd, and so write every book and saturate every wake-up. A process that is not
  dumpable refuses all of that to anyone without CAP_SYS_PTRACE; it also writes no core dump.
  The flag is inherited across fork and reset by execve, so every exec'd process sets it again.
- `die_with_parent(parent_pid)` (PR_SET_PDEATHSIG SIGKILL), then a check of the parent pid: a
  child whose supervisor died before the prctl took effect would otherwise run on unsupervised.
  The signal fires when the THREAD that forked the child ends, so children are forked from the
  parent's main thread only.
- `set_name(name)` (PR_SET_NAME): forked processes share their zygote's command line; the
  kernel's short name (`ps -o comm`, /proc/PID/comm) tells a shard from the zygote.
"""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3
PR_SET_NAME = 15
NAME_BYTES_MAX = 15           # the kernel keeps 16 bytes with the NUL

_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, arg: int | bytes, what: str) -> int:
    result = _libc.prctl(option, arg, 0, 0, 0)
    if result < 0:
        raise OSError(ctypes.get_errno(), f"prctl({what})")
    return result


def forbid_inspection() -> None:
    """Make this process non-dumpable (see the module essay)."""
    _prctl(PR_SET_DUMPABLE, 0, "PR_SET_DUMPABLE")
    assert not dumpable()


def dumpable() -> bool:
    return _prctl(PR_GET_DUMPABLE, 0, "PR_GET_DUMPABLE") != 0


def die_with_parent(parent_pid: int, orphaned_exit_code: int) -> None:
    """SIGKILL this process when its parent dies; exit now if it already has."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, "PR_SET_PDEATHSIG")
    if os.getppid() != parent_pid:       # the parent died before prctl took effect
        os._exit(orphaned_exit_code)


def set_name(name: str) -> None:
    """This process's kernel name (/proc/PID/comm), cut to NAME_BYTES_MAX bytes."""
    _prctl(PR_SET_NAME, name.encode()[:NAME_BYTES_MAX], "PR_SET_NAME")
