"""Run a real observer process for `make run`, tests and benchmarks, with names unique to the run.

Why in obsim: `make run` (obsim/demo.py), the tests of the server, of obclient and of obctl, and
`bench/` scripts all need the same thing (start `observer` as a separate process on its own socket and name, wait
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

import obclient

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
POLL_S = 0.02


def unique_name(prefix: str = "t") -> str:
    return f"{prefix}{os.getpid()}-{secrets.token_hex(3)}"


def log_text(path) -> str:
    """A process's log so far ("" before it made one); undecodable bytes replaced."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


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
        return log_text(self.log_path)

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S, *, books_live: bool = True):
        """Block until the observer serves (and its books are published); returns a client."""
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
