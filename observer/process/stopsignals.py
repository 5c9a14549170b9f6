"""Stop signals for our command-line processes: SIGINT and SIGTERM as a clean stop at any instant.

Why: Python's default SIGINT handler raises KeyboardInterrupt wherever the main thread is: in
an import, half-way through creating the segment, inside the `finally` that removes the socket
file. The first prints a traceback; the others can leave things behind. So `observer` (cli.py)
and `make run` (demo.py) install these handlers as the first act of `main`, and from then on a
signal is data, in two phases:

- Until `hold()`, while nothing exists that a stop must undo (arguments, the config file), the
  first signal raises `Interrupted` once, wherever main is, and main returns its exit status.
  Such a phase may block (a config "file" that is a pipe) and still stops at once.
- From `hold()` on, a signal is only recorded, and its number also arrives as one byte on
  `reader` (`signal.set_wakeup_fd`), which the observer's loop reads like any socket: the stop
  then runs as ordinary fiber code once start-up is complete, and nothing in start-up or
  shutdown is ever cut in half.

The handler raises at most once: having raised, it holds, so the cleanup that `Interrupted`
unwinds through is never interrupted by a second Ctrl-C. `deferred()` holds for one step
(starting a child process) and raises afterwards if a signal came meanwhile. `close`, the last
act of main, ignores both signals until the process exits, so a late signal is never a
traceback nor a different exit status.

Before the first line of `main` the interpreter's own start-up runs, and that part is Python's:
a Ctrl-C there ends the process as it ends any Python program. A launcher that wants no such
window starts the process with SIGINT and SIGTERM blocked (they are inherited across exec);
`install` unblocks them once its handlers are in place, and a signal that came meanwhile is
handled then (demo.py and the tests start the observer this way).
"""

from __future__ import annotations

import contextlib
import signal

SIGNALS = (signal.SIGINT, signal.SIGTERM)
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 0}    # 130 = 128 + SIGINT, as shells report


class Interrupted(BaseException):
    """A stop signal arrived while there was nothing to undo (BaseException: no `except
    Exception` on the way may swallow it)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class StopSignals:
    def __init__(self) -> None:
        self.signum: int | None = None      # the first stop signal received
        self.holding = False
        self.reader = self._writer = None
        self._old_wakeup_fd: int | None = None

    def install(self) -> None:
        """Take SIGINT and SIGTERM for this process (main thread), then unblock them.

        The handlers go in before anything else is imported or made: a signal that comes
        before the wakeup fd exists raises `Interrupted`, as in any phase before `hold`."""
        for signum in SIGNALS:
            signal.signal(signum, self._on_signal)
        import socket

        self.reader, self._writer = socket.socketpair()
        self.reader.setblocking(False)
        self._writer.setblocking(False)
        self._old_wakeup_fd = signal.set_wakeup_fd(self._writer.fileno(),
                                                   warn_on_full_buffer=False)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)

    def _on_signal(self, signum: int, frame) -> None:
        if self.signum is None:
            self.signum = signum
        if not self.holding:
            self.holding = True             # raise once; the unwinding cleanup is not cut
            raise Interrupted(signum)

    def hold(self) -> None:
        """From here on a signal is only recorded (and readable on `reader`)."""
        self.holding = True

    @contextlib.contextmanager
    def deferred(self):
        """Hold for the body (a step that creates something its caller must know about to undo
        it); afterwards raise `Interrupted` if a signal came meanwhile."""
        was_holding = self.holding
        self.holding = True
        try:
            yield
        finally:
            self.holding = was_holding
        if not was_holding and self.signum is not None:
            self.holding = True
            raise Interrupted(self.signum)

    def request_stop(self) -> None:
        """Stop as for a signal, from inside the process (a part that cannot be replaced is
        gone): the loop reads a 0 byte where a signal would write its number."""
        try:
            self._writer.send(b"\0")
        except BlockingIOError:
            pass                            # the pair is full of wake-ups: a stop is coming

    def exit_code(self, default: int) -> int:
        """The status for a stop by the first signal, or `default` when none came."""
        return default if self.signum is None else EXIT_CODES[self.signum]

    def close(self) -> None:
        """The process is done: detach the wakeup fd, close the pair, and ignore both signals.

        Why ignore rather than restore: all that is left is to exit, and the interpreter's
        finalization puts a Python handler back to the default action, so a Ctrl-C in those
        last milliseconds would kill the process with a status of its own (measured: -SIGINT
        instead of 130). An ignored signal stays ignored through finalization."""
        self.holding = True
        for signum in SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        if self._old_wakeup_fd is not None:
            signal.set_wakeup_fd(self._old_wakeup_fd)
            self._old_wakeup_fd = None
        for sock in (self.reader, self._writer):
            if sock is not None:
                sock.close()
