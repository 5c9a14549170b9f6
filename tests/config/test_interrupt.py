"""Ctrl-C at any instant of the observer's start-up or shutdown, or of `make run`, is a clean stop.

Issue 12, point 11. SIGINT goes to a real `observer` process at many instants from the moment
it is started, and to `python -m obsim.demo` at each of its steps. Every run must end with
the documented status (130 after SIGINT, 0 after SIGTERM: cli.py's essay), no traceback
anywhere in its output, and nothing left: no socket file, no /dev/shm entry, no process (shard,
reaper, obsim, obctl), the instance name free.

How the processes are started: with SIGINT and SIGTERM blocked, the documented way to start
them with no window at all (observer/process/stopsignals.py): the interpreter's own start-up, before
observer code runs, is Python's. `main` unblocks them once its handlers are in place, so a
signal sent at 0 ms is handled by observer code too. One test starts the observer the way a
shell does (nothing blocked) and signals it once its handlers are visibly installed.
"""

from __future__ import annotations

import concurrent.futures
import os
import selectors
import signal
import subprocess
import sys
import time

import pytest

import obclient
from observer.process.instance import InstanceLock
from kit.procs import processes_with, shm_entries, unique_name, wait_until

WAIT_S = 60.0
DEMO_WAIT_S = 150.0          # make run waits up to 90 s for live books from four TLS venues
# Milliseconds after the process is started. On a quiet machine start-up takes about 0.5 s, so
# these cover the interpreter, the imports, the config, the segment, the socket and the shard;
# on a busy one they all land in the earlier phases, which the later tests then cover.
INSTANTS_MS = (0, 2, 5, 10, 15, 20, 30, 40, 55, 70, 90, 110, 140, 170, 210, 260, 320, 400, 500,
               620, 760, 950, 1200, 1500)
PARALLEL = 4
FEED = ("--feed", "synthetic:BTCUSD,ETHUSD", "--rate", "50")
STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def start_blocked(argv, **popen_kw) -> subprocess.Popen:
    """Start `argv` with SIGINT and SIGTERM blocked (inherited across exec; see the essay)."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, **popen_kw)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class Run:
    """One observer process, its name, socket and log, in `tmp_path`."""

    def __init__(self, tmp_path, label: str, extra=()):
        self.name = unique_name("int")
        self.socket_path = str(tmp_path / f"{label}.sock")
        self.log_path = tmp_path / f"{label}.log"
        self.argv = [sys.executable, "-m", "observer.cli", *FEED, "--name", self.name,
                     "--socket", self.socket_path, *extra]
        self.proc: subprocess.Popen | None = None

    def start(self, *, blocked: bool = True) -> float:
        with open(self.log_path, "wb") as log:
            start = start_blocked if blocked else subprocess.Popen
            self.proc = start(self.argv, stdout=log, stderr=log)
        return time.monotonic()

    def finish(self) -> int:
        try:
            return self.proc.wait(WAIT_S)
        finally:
            self.kill()

    def kill(self) -> None:
        """A run that went wrong (it ignored the signal): end it; the test has failed."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def check_clean(self, code: int, expected: int) -> None:
        text = self.log_path.read_text(errors="replace")
        assert code == expected, (code, text)
        assert "Traceback" not in text, text
        assert "KeyboardInterrupt" not in text, text
        assert not os.path.exists(self.socket_path)
        assert shm_entries(self.name) == []
        wait_until(lambda: not processes_with(self.name), WAIT_S, "every observer process gone")
        lock = InstanceLock(self.name)
        lock.acquire()                    # the name is free
        lock.release()


def _interrupt_at(tmp_path, instant_ms: float, extra=()) -> None:
    run = Run(tmp_path, f"at{instant_ms}", extra)
    started_s = run.start()
    try:
        time.sleep(max(0.0, started_s + instant_ms / 1000 - time.monotonic()))
        run.proc.send_signal(signal.SIGINT)
    finally:
        code = run.finish()
    run.check_clean(code, 130)


def test_sigint_at_every_instant_of_start_up(tmp_path):
    with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
        futures = [pool.submit(_interrupt_at, tmp_path, ms) for ms in INSTANTS_MS]
        for future in futures:
            future.result()
    assert len(INSTANTS_MS) >= 20


def test_sigint_at_start_up_with_shard_processes(tmp_path):
    core = str(sorted(os.sched_getaffinity(0))[0])
    with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
        futures = [pool.submit(_interrupt_at, tmp_path, ms, ("--cores", core))
                   for ms in (150, 400, 800, 1600)]
        for future in futures:
            future.result()


def _handlers_installed(pid: int) -> bool:
    """True once observer code took SIGTERM (Python itself leaves it at its default)."""
    with open(f"/proc/{pid}/status") as f:
        caught = next(line for line in f if line.startswith("SigCgt:")).split()[1]
    return bool(int(caught, 16) >> (signal.SIGTERM - 1) & 1)


@pytest.mark.parametrize("after_ms", [0, 20, 150])
def test_sigint_from_a_shell_once_main_runs(tmp_path, after_ms):
    run = Run(tmp_path, "shell")
    run.start(blocked=False)
    try:
        wait_until(lambda: _handlers_installed(run.proc.pid), WAIT_S, "the handlers")
        time.sleep(after_ms / 1000)
        run.proc.send_signal(signal.SIGINT)
    finally:
        code = run.finish()
    run.check_clean(code, 130)


def _wait_serving(run: Run) -> None:
    def serving():
        assert run.proc.poll() is None, run.log_path.read_text()
        try:
            obclient.connect(run.socket_path, timeout_s=WAIT_S).close()
        except obclient.ObserverUnavailable:
            return False
        return True

    wait_until(serving, WAIT_S, "the observer to serve")


@pytest.mark.parametrize("first,second,expected", [
    (signal.SIGINT, None, 130),
    (signal.SIGINT, signal.SIGINT, 130),
    (signal.SIGTERM, signal.SIGINT, 0),
    (signal.SIGINT, signal.SIGTERM, 130),
])
def test_signals_during_shutdown(tmp_path, first, second, expected):
    """Served, then stopped: the first signal decides the status, and a second one sent while
    the stop runs (it has logged observer_stopping) is only recorded."""
    run = Run(tmp_path, "stop")
    run.start()
    try:
        _wait_serving(run)
        run.proc.send_signal(first)
        if second is not None:
            wait_until(lambda: run.proc.poll() is not None
                       or "observer_stopping" in run.log_path.read_text(), WAIT_S, "the stop")
            if run.proc.poll() is None:
                run.proc.send_signal(second)
    finally:
        code = run.finish()
    run.check_clean(code, expected)
    assert "observer_stopping" in run.log_path.read_text()


def test_two_signals_at_once_after_serving(tmp_path):
    run = Run(tmp_path, "twice")
    run.start()
    try:
        _wait_serving(run)
        run.proc.send_signal(signal.SIGINT)
        run.proc.send_signal(signal.SIGINT)
    finally:
        code = run.finish()
    run.check_clean(code, 130)


# -- make run ------------------------------------------------------------------------------------

DEMO_STEPS = (None, "obsim: serving", "observer: started", "$ obctl list")


def _demo_interrupted_at(tmp_path, step: str | None) -> None:
    """Run `python -m obsim.demo` in a session of its own with TMPDIR in `tmp_path`, and send
    SIGINT to its process group (a terminal's Ctrl-C) when it prints `step`."""
    private_tmp = tmp_path / f"tmp-{DEMO_STEPS.index(step)}"
    private_tmp.mkdir()
    proc = start_blocked([sys.executable, "-m", "obsim.demo"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, start_new_session=True,
                         env=dict(os.environ, TMPDIR=str(private_tmp)))
    out, err = b"", b""
    try:
        if step is not None:
            out = _read_until(proc, step.encode())
        os.killpg(proc.pid, signal.SIGINT)
        more_out, err = proc.communicate(timeout=DEMO_WAIT_S)
        out += more_out
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    text = (out + err).decode(errors="replace")
    assert proc.returncode == 130, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    assert b"make run: interrupted" in err, text
    name_mark = f"demo{proc.pid}-"
    assert processes_with(name_mark) == [] and processes_with(str(private_tmp)) == []
    assert shm_entries(name_mark) == []
    assert os.listdir(private_tmp) == [], text          # obsim's and the observer's dirs


def _read_until(proc: subprocess.Popen, marker: bytes) -> bytes:
    out = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline_s = time.monotonic() + DEMO_WAIT_S
        while marker not in out:
            assert time.monotonic() < deadline_s, out
            if sel.select(deadline_s - time.monotonic()):
                chunk = os.read(proc.stdout.fileno(), 65536)
                assert chunk, out                      # the demo ended before the step
                out += chunk
    return out


def test_make_run_interrupted_at_each_step(tmp_path):
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(_demo_interrupted_at, tmp_path, step) for step in DEMO_STEPS]
        for future in futures:
            future.result()
