"""The shard processes of one observer: start, watch, restart with backoff, stop (C1, C9).

Why in the supervisor's loop: watching a child is waiting for an fd. Each shard process is
forked by the zygote (observer/process/zygote.py), which passes back a pidfd that becomes readable when
the process ends, however it ends; one fiber per shard waits on it with `loom.wait_readable`, so
a death is seen at once, with no SIGCHLD handler, no polling and no thread. The exit status
comes from the zygote (it is the shard's parent, so only it can reap), and signals go through
the pidfd, so no pid reuse can make us signal a stranger.

When a shard dies unasked:
1. its books are republished as stale by the supervisor, through a `ShardWriter` made for the
   occasion from the segment's current sequence words. Safe because a dead process writes
   nothing: at any moment exactly one process writes a shard's books. Clients see the stale
   flag on their next read and a KIND_STALE record in the ring;
2. the death is logged once (`shard_exit`, with the exit status) and counted;
3. after a backoff (`restart_backoff_s`, doubling per death in a row up to
   `restart_backoff_max_s`, reset once a shard has run `healthy_after_s`) the zygote forks a
   new process with the same spec. Its writer resumes from the sequence words in the segment,
   its feeds resync, and each book turns live on its first publish. Clients never reconnect:
   the segment, its eventfds and the control socket belong to the supervisor and did not
   change.

Stopping (`stop`): SIGTERM to every shard, then SIGKILL to any still alive after `stop_s`; the
watchers see the exits and return instead of restarting. A shard whose zygote is killed (with
the supervisor, or alone) dies by PR_SET_PDEATHSIG.
"""

from __future__ import annotations

import logging
import signal
import time

from observer import loom
from observer.telemetry.logs import log_event
from observer.process.shardproc import ShardSpec
from observer.process.zygote import ShardProcess

log = logging.getLogger("observer.process.supervisor")

RESTART_BACKOFF_S = 0.1
RESTART_BACKOFF_MAX_S = 10.0
HEALTHY_AFTER_S = 30.0
STOP_S = 5.0
KILL_WAIT_S = 5.0


class ShardChild:
    """One shard slot: its spec, its current process and what happened to it."""

    def __init__(self, spec: ShardSpec, book_names: list[str]):
        self.spec = spec
        self.index = spec.shard_index
        self.book_names = book_names
        self.proc: ShardProcess | None = None
        self.started_s = 0.0
        self.restarts = 0
        self.deaths_in_row = 0
        self.last_exit = None          # returncode of the last unasked death
        self.watcher = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None


class ShardManager:
    def __init__(self, loop, supervisor, zygote, specs: list[ShardSpec], *,
                 restart_backoff_s: float = RESTART_BACKOFF_S,
                 restart_backoff_max_s: float = RESTART_BACKOFF_MAX_S,
                 healthy_after_s: float = HEALTHY_AFTER_S, stop_s: float = STOP_S):
        assert restart_backoff_s > 0
        assert restart_backoff_max_s >= restart_backoff_s
        self.loop = loop
        self.supervisor = supervisor
        self.zygote = zygote
        names = [f"{d.exchange}:{d.symbol}" for d in supervisor.book_descs]
        self.children = [ShardChild(s, [names[i] for i in sorted(s.book_index_of.values())])
                         for s in specs]
        self.restart_backoff_s = restart_backoff_s
        self.restart_backoff_max_s = restart_backoff_max_s
        self.healthy_after_s = healthy_after_s
        self.stop_s = stop_s
        self.stopping = False

    # -- lifetime ------------------------------------------------------------------------------

    def start(self, loop=None) -> None:
        """Start every shard and its watcher (the same call shape as an in-process Shard). A
        shard whose first start fails is started again by its watcher, as after a death."""
        assert loop is None or loop is self.loop
        for child in self.children:
            try:
                self._spawn(child)
            except OSError as exc:
                self._start_failed(child, exc)
            child.watcher = self.loop.spawn(self._watch, child, name=f"shard{child.index}-watch")

    def _spawn(self, child: ShardChild) -> None:
        child.proc = self.zygote.spawn(child.spec)
        child.started_s = time.monotonic()

    def _watch(self, child: ShardChild) -> None:
        if child.proc is None:                 # its first start failed
            self._restart(child)
        while not self.stopping:
            loom.wait_readable(child.proc.pidfd)
            code = child.proc.wait()
            self._close_proc(child)
            if self.stopping:
                return
            self._died(child, code)
            self._restart(child)

    def _restart(self, child: ShardChild) -> None:
        """Start the shard again after its backoff; a failed start (fds or memory exhausted)
        is logged and retried with a longer backoff, never given up."""
        while not self.stopping:
            loom.sleep(self._backoff_s(child))
            if self.stopping:
                return
            try:
                self._spawn(child)
            except OSError as exc:
                self._start_failed(child, exc)
                continue
            child.restarts += 1
            log_event(log, "shard_restart", level=logging.WARNING, shard=child.index,
                      pid=child.proc.pid, restarts=child.restarts,
                      reason=exit_reason(child.last_exit), books=",".join(child.book_names))
            return

    def _start_failed(self, child: ShardChild, exc: OSError) -> None:
        child.deaths_in_row += 1
        log_event(log, "shard_start_failed", level=logging.ERROR, shard=child.index,
                  reason=str(exc))

    def _died(self, child: ShardChild, code: int) -> None:
        lived_s = time.monotonic() - child.started_s
        child.deaths_in_row = 1 if lived_s >= self.healthy_after_s else child.deaths_in_row + 1
        child.last_exit = code
        log_event(log, "shard_exit", level=logging.ERROR, shard=child.index,
                  reason=exit_reason(code), lived_s=round(lived_s, 3),
                  books=",".join(child.book_names))
        self.supervisor.mark_shard_stale(child.index)

    def _backoff_s(self, child: ShardChild) -> float:
        exponent = min(child.deaths_in_row - 1, 30)
        return min(self.restart_backoff_max_s, self.restart_backoff_s * 2 ** exponent)

    def stop(self) -> None:
        """From a fiber: SIGTERM every shard, SIGKILL after `stop_s`, wait for all. Idempotent."""
        self.stopping = True
        for child in self.children:
            if child.alive:
                _signal(child, signal.SIGTERM)
            elif child.watcher is not None and not child.watcher.done:
                child.watcher.cancel()               # in its backoff sleep: nothing to wait for
        deadline_s = time.monotonic() + self.stop_s
        for child in self.children:
            if not self._join(child, deadline_s - time.monotonic()):
                log_event(log, "shard_kill", level=logging.WARNING, shard=child.index,
                          reason=f"still alive {self.stop_s} s after SIGTERM")
                _signal(child, signal.SIGKILL)
                self._join(child, KILL_WAIT_S)
        self.kill_all()

    def _join(self, child: ShardChild, timeout_s: float) -> bool:
        if child.watcher is None:
            return True
        return not loom.join_all([child.watcher], timeout_s=max(0.0, timeout_s)).late

    def kill_all(self) -> None:
        """Last resort, from plain code too: no shard outlives the supervisor. Idempotent."""
        self.stopping = True
        for child in self.children:
            if child.alive:
                _signal(child, signal.SIGKILL)
                child.proc.wait_gone(KILL_WAIT_S)
            self._close_proc(child)

    def _close_proc(self, child: ShardChild) -> None:
        if child.proc is not None and child.proc.pidfd >= 0:
            self.loop.forget(child.proc.pidfd)
            child.proc.close()

    # -- stats ---------------------------------------------------------------------------------

    def stats(self) -> list[dict]:
        return [{"shard": c.index, "core": c.spec.core, "pid": c.proc.pid if c.alive else None,
                 "alive": c.alive, "restarts": c.restarts, "books": len(c.book_names),
                 "last_exit": exit_reason(c.last_exit) if c.last_exit is not None else None}
                for c in self.children]


def _signal(child: ShardChild, signum: int) -> None:
    child.proc.send_signal(signum)          # through its pidfd; a no-op once it has ended


def exit_reason(code: int | None) -> str:
    if code is None:
        return "unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
