"""A shard process: one per core, forked by the zygote (observer/process/zygote.py) for the supervisor.

Why forked from the zygote and not exec'd: the segment is sealed once the observer is up, so
no process started afterwards can map it writable (observer/shm/segment.py); a shard must be
born with a writable mapping, which only a fork of the zygote (which mapped it before the seal)
gives. Why not a fork of the supervisor: see the zygote's essay. What a shard receives (C1):

- its spec, a `ShardSpec`: the shard's slice of the config (its feeds only), its shard index
  and core, and the segment book index of each of its books. The supervisor pickles it into a
  sealed-size memfd (`write_spec`) and passes the memfd to the zygote, so it never blocks
  writing it, whatever the size; the zygote reads it (`read_spec`) before it forks;
- the zygote's read-write mapping of the segment and the shard eventfds, by inheritance.

What it does (`run`): dies with the zygote (the zygote sets that up), makes itself
non-dumpable (observer/process/prctl.py), pins itself (`loom.pin`), takes the writer of its own books
and ring (the only writer of them), and runs its feeds on its own loom loop until SIGTERM.
SIGINT is ignored: a Ctrl-C reaches the whole process group, and the supervisor decides the
order of the stop. A clean stop leaves the books stale-free as they are; the supervisor marks
them stale if the shard dies instead.

Exit codes: 0 after SIGTERM, 4 when the zygote was already gone at start-up, 1 when `run`
raised (the traceback is on stderr).
"""

from __future__ import annotations

import os
import pickle
import signal
from dataclasses import dataclass

SPEC_BYTES_MAX = 16 << 20


@dataclass(frozen=True)
class ShardSpec:
    name: str                     # the observer's instance name (logs)
    shard_index: int
    core: int | None              # None: unpinned
    config: object                # ObserverConfig holding this shard's feeds only
    book_index_of: dict           # {(exchange, symbol): segment book index}


def write_spec(spec: ShardSpec) -> int:
    """A memfd holding the pickled spec, positioned at 0; the caller closes it."""
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


def read_spec(fd: int) -> ShardSpec:
    """The spec in a memfd made by `write_spec` (read from its start; fd left open)."""
    chunks, total = [], 0
    while total <= SPEC_BYTES_MAX:
        chunk = os.pread(fd, SPEC_BYTES_MAX + 1 - total, total)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    if total > SPEC_BYTES_MAX:
        raise ValueError(f"shard spec exceeds spec_bytes_max={SPEC_BYTES_MAX}")
    spec = pickle.loads(b"".join(chunks))
    if not isinstance(spec, ShardSpec):
        raise TypeError(f"the spec memfd holds a {type(spec).__name__}, not a ShardSpec")
    return spec


def run(spec: ShardSpec, segment) -> int:
    """The shard's life, on `segment` (the zygote's read-write mapping, inherited by fork)."""
    import logging
    import socket

    from observer.telemetry import logs
    from observer import loom
    from observer.process import prctl
    from observer.shard.feedplan import plan as feed_plan
    from observer.telemetry.logs import log_event
    from observer.shard.runner import Shard

    prctl.forbid_inspection()                 # inherited from the zygote; said again here
    config = spec.config
    logs.setup(config.log_format, config.log_level, fields={"shard": spec.shard_index})
    log = logging.getLogger(f"observer.shard{spec.shard_index}")
    if spec.core is not None:
        loom.pin(spec.core)
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
