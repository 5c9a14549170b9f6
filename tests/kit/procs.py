"""The test kit: what many tests need to watch processes, shared memory and conditions.

The observer launcher itself (`ObserverProcess`, `unique_name`) lives in obsim/observerproc.py
because `make run` uses it too; it is imported here so a test takes everything from one place.
Waiting is by condition with a deadline (`wait_until`), never by a fixed sleep.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from obsim.observerproc import POLL_S, STOP_TIMEOUT_S, ObserverProcess, log_text, unique_name

__all__ = ["NO_IO_URING_PRELUDE", "ObserverForker", "ObserverProcess", "SYS_EPOLL_CREATE",
           "SYS_EPOLL_CREATE1", "SYS_IO_URING_SETUP", "log_text", "processes_with",
           "refusing_prelude", "shm_entries", "unique_name", "wait_until"]


def shm_entries(name: str) -> list[str]:
    """Shared-memory objects whose name contains `name` (Linux: /dev/shm). The observer makes
    none (its segment is a memfd); tests assert that it stays so."""
    try:
        return [e for e in os.listdir("/dev/shm") if name in e]
    except FileNotFoundError:
        return []


def processes_with(text: str, comm_prefix: str = "") -> list[int]:
    """Pids of live processes whose command line contains `text` and whose kernel name starts
    with `comm_prefix` (Linux /proc). Shards share their zygote's command line
    (`observer.process.zygote --name NAME`); their names are `ob-shardN`, the zygote's `ob-zygote`."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
            with open(f"/proc/{entry}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        if (text in cmdline and comm.startswith(comm_prefix) and state != b"Z"
                and int(entry) != os.getpid()):
            pids.append(int(entry))
    return pids


def wait_until(predicate, timeout_s: float, what: str, *, sleep=time.sleep, poll_s=POLL_S):
    """Poll `predicate` until it returns a true value (returned); TimeoutError naming `what`.
    `sleep`: `loom.sleep` inside a fiber, so the loop runs meanwhile."""
    deadline_s = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline_s:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        sleep(poll_s)


SYS_IO_URING_SETUP = 425          # x86-64 syscall numbers the preludes below may refuse
SYS_EPOLL_CREATE = 213
SYS_EPOLL_CREATE1 = 291


def refusing_prelude(*syscalls: int) -> str:
    """Python source for a child process (run with `python -c`): its first lines forbid the
    given x86-64 syscalls with a seccomp filter returning EPERM, as a container runtime's
    profile does. x86-64 only; tests that use it skip elsewhere. It also gives the child
    `keep_log(name, level)`, which collects that logger's messages into `records`."""
    return _REFUSING_PRELUDE.replace("SYSCALLS", repr(list(syscalls)))


_REFUSING_PRELUDE = r"""
import ctypes
class Filter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8),
                ("k", ctypes.c_uint32)]
class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(Filter))]
LD_ABS, JEQ, RET = 0x20, 0x15, 0x06
ALLOW, EPERM = 0x7FFF0000, 0x00050000 | 1
code = [Filter(LD_ABS, 0, 0, 4), Filter(JEQ, 1, 0, 0xC000003E),  # x86-64 only, else allow
        Filter(RET, 0, 0, ALLOW), Filter(LD_ABS, 0, 0, 0)]        # the syscall number
for number in SYSCALLS:
    code += [Filter(JEQ, 0, 1, number), Filter(RET, 0, 0, EPERM)]
code.append(Filter(RET, 0, 0, ALLOW))                            # everything else: allow
program = (Filter * len(code))(*code)
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0                           # PR_SET_NO_NEW_PRIVS
prog = Prog(len(code), program)
assert libc.prctl(22, 2, ctypes.byref(prog), 0, 0) == 0          # PR_SET_SECCOMP, FILTER

import logging
records = []  # the lines logged under the loggers passed to keep_log, for the child's report
class Keep(logging.Handler):
    def emit(self, record):
        from observer.telemetry.logs import text_formatter     # the event and its fields, as text
        records.append(text_formatter().format(record))
def keep_log(name, level=logging.NOTSET):
    logger = logging.getLogger(name)
    logger.addHandler(Keep())
    logger.setLevel(level)
"""
NO_IO_URING_PRELUDE = refusing_prelude(SYS_IO_URING_SETUP)


# A parent that has imported the observer once and forks one observer per line on its stdin,
# printing each pid: N start-ups cost N forks, not N interpreter and numpy imports on a busy
# machine. Each fork dies with the forker (PR_SET_PDEATHSIG), so killing the forker ends every
# observer it started, even one a failed test never got to kill.
_FORKER = """
import os, signal, sys
import observer.cli, observer.process.prctl, observer.process.supervisor, observer.feeds.synthetic
signal.signal(signal.SIGCHLD, signal.SIG_IGN)      # the kernel reaps the killed observers
forker_pid = os.getpid()
for line in sys.stdin:
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        observer.process.prctl.die_with_parent(forker_pid, 1)
        os._exit(observer.cli.main(sys.argv[1:]))
    print(pid, flush=True)
"""


class ObserverForker:
    """Starts observers (`observer` command-line `args`) by forking a parent that imported it
    once; `start()` returns the new observer's pid. Their stderr goes to `log_path`. `close()`
    ends the forker after its last observer and returns its exit code; leaving the `with`
    kills it, and with it every observer it started that is still alive."""

    def __init__(self, args, log_path):
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-c", _FORKER, *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, text=True)

    def start(self) -> int:
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def close(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        self.proc.stdin.close()
        return self.proc.wait(timeout_s)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT_S)
        self.proc.stdout.close()
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        self._log.close()

    def __enter__(self) -> "ObserverForker":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()
