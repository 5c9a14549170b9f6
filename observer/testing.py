"""Run a real observer process for tests and benchmarks, with names unique to the run.

Why in the package: tests of the server, of obclient and of obctl, and `bench/` scripts all
need the same thing (start `observer` as a separate process on its own socket and name, wait
until it serves live books, stop or kill it, leave nothing behind), and `make run` needs the
waiting part. Each `ObserverProcess` gets a private temp directory for its socket and log, a
name made of the caller's pid and a random token, and removes all of it on exit.

Waiting is by condition with a deadline (the socket answers, the books are published), never
by a fixed sleep, so it works on a busy machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import secrets

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
POLL_S = 0.02


def unique_name(prefix: str = "t") -> str:
    return f"{prefix}{os.getpid()}-{secrets.token_hex(3)}"


class ObserverProcess:
    def __init__(self, feed: str | None = "synthetic:BTCUSD,ETHUSD", *, rate: float = 200.0,
                 seed: int = 1, name: str | None = None, socket_path: str | None = None,
                 extra_args=(), env=None, workdir: str | None = None, launcher=()):
        self.workdir = workdir or tempfile.mkdtemp(prefix="obs-")
        self._own_workdir = workdir is None
        self.name = name or unique_name()
        self.socket_path = socket_path or os.path.join(self.workdir, "observer.sock")
        self.log_path = os.path.join(self.workdir, f"{self.name}.log")
        # feed=None: the feeds come from extra_args (e.g. --config FILE written for obsim)
        feed_args = ["--feed", feed, "--rate", str(rate), "--seed", str(seed)] if feed else []
        # launcher: a command prefix, e.g. setpriv dropping every capability
        self.args = [*launcher, sys.executable, "-m", "observer.cli", *feed_args, "--name",
                     self.name, "--socket", self.socket_path, *extra_args]
        self.env = dict(os.environ if env is None else env)
        self.env.pop("OBSERVER_SOCKET", None)
        self.proc: subprocess.Popen | None = None

    def start(self, *, process_group: int | None = None) -> "ObserverProcess":
        """`process_group=0`: in a process group of its own, so a Ctrl-C at the terminal reaches
        only the caller, which then stops it in order (make run does this)."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError(f"observer {self.name} is already running (pid {self.proc.pid})")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=log, env=self.env,
                                         stdin=subprocess.DEVNULL, process_group=process_group)
        return self

    def log_text(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S, *, books_live: bool = True):
        """Block until the observer serves (and its books are published); returns a client."""
        import obclient

        deadline_s = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"observer exited with {self.proc.returncode}:\n"
                                   f"{self.log_text()}")
            try:
                client = obclient.connect(self.socket_path, client_name="harness",
                                          timeout_s=max(1.0, deadline_s - time.monotonic()))
            except obclient.ObserverUnavailable:
                client = None
            if client is not None:
                try:
                    if not books_live or all(not client.snapshot(b.name, 0).stale
                                             for b in client.books()):
                        return client
                except obclient.ObserverUnavailable:
                    pass     # a starved observer's heartbeat looked stale: ask again, same deadline
                client.close()
            if time.monotonic() > deadline_s:
                raise TimeoutError(f"observer not ready within {timeout_s} s:\n{self.log_text()}")
            time.sleep(POLL_S)

    def send_signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, signum: int = signal.SIGTERM, timeout_s: float = STOP_TIMEOUT_S) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signum)
        return self.proc.wait(timeout_s)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT_S)

    def close(self) -> None:
        """Kill if still running and remove the work directory."""
        self.kill()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> "ObserverProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


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
    (`observer.zygote --name NAME`); their names are `ob-shardN`, the zygote's `ob-zygote`."""
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


def wait_until(predicate, timeout_s: float, what: str):
    """Poll `predicate` until it returns a true value; TimeoutError naming `what`."""
    deadline_s = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline_s:
            raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(POLL_S)


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
        from observer.logs import TextFormatter      # the event and its fields, as text
        records.append(TextFormatter().format(record))
def keep_log(name, level=logging.NOTSET):
    logger = logging.getLogger(name)
    logger.addHandler(Keep())
    logger.setLevel(level)
"""
NO_IO_URING_PRELUDE = refusing_prelude(SYS_IO_URING_SETUP)
