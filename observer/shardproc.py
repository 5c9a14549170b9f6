"""A shard process: `python -m observer.shardproc`, started by the supervisor, one per core.

Why a fresh interpreter and not fork: the supervisor runs a loom loop, a thread pool and a
control server; a forked copy of that would inherit fibers, epoll registrations and locks held
by threads that do not exist in the child. A clean exec starts from nothing and receives exactly
what it needs (C1):

- its spec on stdin, a sealed-size memfd holding one pickle (`ShardSpec`): the shard's slice
  of the config (its feeds only), its shard index and core, the segment book index of each of
  its books, the fd numbers below and the supervisor's pid. A memfd and not a pipe, so the
  supervisor never blocks writing it, whatever the size;
- the segment's read-write fd and every shard eventfd, inherited by number (`pass_fds`).

What it does: dies with the supervisor (PR_SET_PDEATHSIG, set before anything else and then
checked against the parent pid, which closes the race of a parent dying first), pins itself
(`loom.pin`), attaches the segment by fd, takes the writer of its own books and ring (the only
writer of them), and runs its feeds on its own loom loop until SIGTERM. SIGINT is ignored: a
Ctrl-C reaches the whole process group, and the supervisor decides the order of the stop. A
clean stop leaves the books stale-free as they are; the supervisor marks them stale if the
shard dies instead.

Exit codes: 0 after SIGTERM, 4 when the supervisor was already gone at start-up, 2 for a spec
it cannot use (a bug, reported with its reason).
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import sys
from dataclasses import dataclass

PR_SET_PDEATHSIG = 1
EXIT_ORPHANED = 4
EXIT_BAD_SPEC = 2
SPEC_BYTES_MAX = 16 << 20


@dataclass(frozen=True)
class ShardSpec:
    name: str                     # the observer's instance name (logs, ps)
    shard_index: int
    core: int | None              # None: unpinned
    config: object                # ObserverConfig holding this shard's feeds only
    book_index_of: dict           # {(exchange, symbol): segment book index}
    shm_fd: int                   # read-write segment fd, inherited
    eventfds: tuple               # every shard's eventfd, inherited (the writer uses its own)
    parent_pid: int


def write_spec(spec: ShardSpec) -> int:
    """A memfd holding the pickled spec, positioned at 0, for the child's stdin."""
    data = pickle.dumps(spec, protocol=pickle.HIGHEST_PROTOCOL)
    if len(data) > SPEC_BYTES_MAX:
        raise ValueError(f"shard spec of {len(data)} bytes exceeds spec_bytes_max={SPEC_BYTES_MAX}")
    fd = os.memfd_create(f"observer-shard-{spec.shard_index}", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _die_with_parent(parent_pid: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent_pid:       # the supervisor died before prctl took effect
        os._exit(EXIT_ORPHANED)


def _read_spec() -> ShardSpec:
    data = sys.stdin.buffer.read(SPEC_BYTES_MAX + 1)
    spec = pickle.loads(data)
    from observer.shardproc import ShardSpec as Spec   # run as __main__, the class is there
    if not isinstance(spec, Spec):
        raise TypeError(f"stdin holds a {type(spec).__name__}, not a ShardSpec")
    return spec


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        spec = _read_spec()
    except Exception as exc:                  # started by hand, or a supervisor bug
        print(f"observer shard: unusable spec on stdin: {exc}", file=sys.stderr)
        return EXIT_BAD_SPEC
    _die_with_parent(spec.parent_pid)
    return run(spec)


def run(spec: ShardSpec) -> int:
    import logging
    import socket

    from observer import logs, loom
    from observer.feedplan import plan as feed_plan
    from observer.logs import log_event
    from observer.shard import Shard
    from observer.shm import Segment

    config = spec.config
    logs.setup(config.log_format, config.log_level, fields={"shard": spec.shard_index})
    log = logging.getLogger(f"observer.shard{spec.shard_index}")
    if spec.core is not None:
        loom.pin(spec.core)
    segment = Segment.attach_fd(spec.shm_fd, list(spec.eventfds))
    os.close(spec.shm_fd)                     # attach_fd keeps its own dup
    loop = loom.Loop(backend=config.backend)
    wake_r, wake_w = socket.socketpair()
    wake_w.setblocking(False)
    signal.set_wakeup_fd(wake_w.fileno())
    signal.signal(signal.SIGTERM, lambda signum, frame: None)   # the wakeup fd carries it
    try:
        _, feeds, _ = feed_plan(config)
        shard = Shard(spec.shard_index, segment.writer(spec.shard_index, wake=config.wake,
                                             wake_ahead=config.wake_ahead), feeds,
                      spec.book_index_of)
        log_event(log, "shard_started", shard=spec.shard_index, core=spec.core,
                  pid=os.getpid(), backend=loop.backend_name, books=len(spec.book_index_of),
                  feeds=len(feeds))
        loop.run(_serve, loop, shard, wake_r)
        log_event(log, "shard_stopped", shard=spec.shard_index, pid=os.getpid())
    finally:
        signal.set_wakeup_fd(-1)
        wake_r.close()
        wake_w.close()
        loop.close()
        segment.close()
    return 0


def _serve(loop, shard, wake_r) -> None:
    from observer import loom

    shard.start(loop)
    loom.recv(wake_r, 1)                      # SIGTERM
    shard.stop()
    loop.stop()


if __name__ == "__main__":
    raise SystemExit(main())
