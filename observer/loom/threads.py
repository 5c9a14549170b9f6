"""Thread offload: a bounded pool for calls that block (DNS, file I/O, a C library).

A fiber hands `fn(*args)` to the pool and waits; a worker thread runs it and appends the job to
a completion deque, then writes the pool's eventfd. The loop has a read op armed on that eventfd
while any job is out, so a finished job wakes the loop through the same backend path as any
other I/O, and the loop drains the deque and reschedules the waiting fibers. The eventfd is
read only by the loop, so one write per job is enough (a missed wake-up is impossible: the
counter holds every write until the loop reads it).

Limits: `threads_max` workers (started lazily) and `jobs_max` jobs out at once; past the latter
`run_in_thread` raises rather than queueing without bound. A fiber that gives up on a job
(timeout, cancel) leaves it to finish; its result is dropped.
"""

from __future__ import annotations

import collections
import os
import queue
import threading

from ._common import LoomError

JOBS_MAX = 1024


class Job:
    __slots__ = ("fiber", "fn", "args", "result", "error", "abandoned")

    def __init__(self, fiber, fn, args):
        self.fiber = fiber
        self.fn = fn
        self.args = args
        self.result = None
        self.error = None
        self.abandoned = False


class ThreadPool:
    def __init__(self, loop, threads_max: int = 4, jobs_max: int = JOBS_MAX):
        assert threads_max > 0
        assert jobs_max > 0
        self._loop = loop
        self.threads_max = threads_max
        self.jobs_max = jobs_max
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._done: collections.deque[Job] = collections.deque()
        self._threads: list[threading.Thread] = []
        self.jobs_out = 0                    # submitted, not yet collected by the loop
        self._efd = -1                       # the loop reads this one
        self._signal_fd = -1                 # workers write this one (same fd for an eventfd)
        self._wake_buf = bytearray(8)
        self._wake_op = None

    def submit(self, fiber, fn, args) -> Job:
        if self.jobs_out >= self.jobs_max:
            raise LoomError(f"jobs_max={self.jobs_max} thread jobs already out")
        if self._efd < 0:
            self._open_wake_fd()
        job = Job(fiber, fn, args)
        self.jobs_out += 1
        if self._wake_op is None:
            self._wake_op = self._loop.read(self._efd, self._wake_buf, self._on_wake)
        if len(self._threads) < min(self.jobs_out, self.threads_max):
            thread = threading.Thread(target=self._worker, name=f"loom-pool-{len(self._threads)}",
                                      daemon=True)
            self._threads.append(thread)
            thread.start()
        self._jobs.put(job)
        return job

    def _open_wake_fd(self) -> None:
        """An eventfd where there is one (Linux); a pipe elsewhere (BSD, macOS)."""
        if hasattr(os, "eventfd"):
            self._efd = self._signal_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        else:
            self._efd, self._signal_fd = os.pipe()
            os.set_blocking(self._signal_fd, False)

    def _signal(self) -> None:
        try:
            os.write(self._signal_fd, b"\1\0\0\0\0\0\0\0")
        except BlockingIOError:
            pass                      # a pipe full of wake-ups already wakes the loop

    def abandon(self, job: Job) -> None:
        job.abandoned = True

    def _worker(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job.result = job.fn(*job.args)
            except BaseException as exc:      # delivered to the waiting fiber
                job.error = exc
            self._done.append(job)
            self._signal()

    def _on_wake(self, result) -> None:
        """The eventfd read completed (on the loop): hand finished jobs back to their fibers."""
        self._wake_op = None
        if isinstance(result, BaseException):      # the pool is closing
            return
        loop = self._loop
        while self._done:
            job = self._done.popleft()
            self.jobs_out -= 1
            if not job.abandoned:
                loop.reschedule(job.fiber, job.result, job.error)
        if self.jobs_out:
            self._wake_op = loop.read(self._efd, self._wake_buf, self._on_wake)

    def close(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout=5.0)
        self._threads.clear()
        if self._wake_op is not None:
            self._loop.cancel(self._wake_op)
            self._wake_op = None
        if self._efd >= 0:
            self._loop.forget(self._efd)
            os.close(self._efd)
            if self._signal_fd != self._efd:
                os.close(self._signal_fd)
            self._efd = self._signal_fd = -1
