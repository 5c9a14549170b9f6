"""The segment: one POSIX shared-memory object per observer instance, plus one eventfd per shard.

Why this module. The supervisor creates the segment once at start-up, sized from the book list
and the limits in `proto.layout`, and never resizes it (a shrinking mapping kills readers with
SIGBUS, C9). It writes the header and book descriptors, then hands each shard a `ShardWriter`
(observer/shm/writer.py) for its own books and ring. Clients receive a read-only fd
(`reader_fd()`: `O_RDONLY`, so it cannot be mapped writable, C8) and the shard eventfds.

Process model (C1). A shard process either inherits the Segment object across `fork` (the
mapping stays shared) and calls `segment.writer(i)`, or attaches afresh with
`Segment.attach(name, eventfds)` (by name) or `Segment.attach_fd(shm_fd, eventfds)` (by an
inherited or passed read-write fd), which validate the header like a reader does.

Eventfds are created non-blocking, so a writer can never block on one; nobody reads them
(clients wait with EPOLLET, C6), so their counters only grow, by one per batch: 2**64 batches
is out of reach.
"""

from __future__ import annotations

import mmap
import os
import time

import numpy as np
import posix_ipc

from proto import latch, layout
from proto.layout import BookDesc, Geometry, LayoutError

HEARTBEAT_PERIOD_S_DEFAULT = 0.1
SEGMENT_MODE_DEFAULT = 0o600


class Segment:
    """A mapped segment (read-write) and its eventfds. Create with `create` or `attach*`."""

    def __init__(self, name: str | None, shm_fd: int, eventfds: list[int], owner: bool):
        latch.require_tso()
        self.name = name
        self.fd = shm_fd
        self.eventfds = list(eventfds)
        self._owner = owner  # created the eventfds, so closes them
        size_bytes = os.fstat(shm_fd).st_size
        self.map = mmap.mmap(shm_fd, size_bytes, mmap.MAP_SHARED,
                             mmap.PROT_READ | mmap.PROT_WRITE)
        self.geometry: Geometry | None = None
        self.header = np.frombuffer(self.map, layout.HEADER, count=1)
        self._writers: dict[int, object] = {}

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def create(cls, name: str, book_descs: list[BookDesc], shards_n: int, depth_max: int,
               ring_records: int, *, generation: int | None = None,
               heartbeat_period_s: float = HEARTBEAT_PERIOD_S_DEFAULT,
               mode: int = SEGMENT_MODE_DEFAULT) -> "Segment":
        """Create the named segment (failing if it exists) and one eventfd per shard."""
        geometry = layout.plan_geometry(len(book_descs), shards_n, depth_max, ring_records)
        _check_descs(book_descs, shards_n)
        shm = posix_ipc.SharedMemory(_posix_name(name), posix_ipc.O_CREX, mode=mode,
                                     size=geometry.segment_bytes)
        eventfds: list[int] = []
        try:
            eventfds = [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC) for _ in range(shards_n)]
            segment = cls(name, shm.fd, eventfds, owner=True)
        except BaseException:
            for fd in eventfds:
                os.close(fd)
            shm.close_fd()
            posix_ipc.unlink_shared_memory(_posix_name(name))
            raise
        segment._init_header(geometry, book_descs, generation, heartbeat_period_s)
        return segment

    @classmethod
    def attach(cls, name: str, eventfds: list[int]) -> "Segment":
        """Map an existing segment read-write by name (a shard in another process)."""
        shm = posix_ipc.SharedMemory(_posix_name(name), 0)
        return cls._attached(name, shm.fd, eventfds)

    @classmethod
    def attach_fd(cls, shm_fd: int, eventfds: list[int]) -> "Segment":
        """Map an existing segment read-write from an inherited or passed fd (kept open)."""
        return cls._attached(None, os.dup(shm_fd), eventfds)

    @classmethod
    def _attached(cls, name: str | None, shm_fd: int, eventfds: list[int]) -> "Segment":
        try:
            segment = cls(name, shm_fd, eventfds, owner=False)
        except BaseException:
            os.close(shm_fd)
            raise
        try:
            segment.geometry = layout.check_header(segment.map, len(segment.map))
        except LayoutError:
            segment.close()
            raise
        if len(eventfds) != segment.geometry.shards_n:
            segment.close()
            raise ValueError(f"{len(eventfds)} eventfds for {segment.geometry.shards_n} shards")
        return segment

    def _init_header(self, geometry: Geometry, book_descs: list[BookDesc],
                     generation: int | None, heartbeat_period_s: float) -> None:
        self.geometry = geometry
        descs = np.frombuffer(self.map, layout.BOOK_DESC, count=geometry.books_n,
                              offset=geometry.descs_offset)
        for index, desc in enumerate(book_descs):
            descs[index] = (desc.exchange.encode(), desc.symbol.encode(), desc.native.encode(),
                            desc.shard_index, index)
        head = self.header[0]
        now_ns = time.time_ns()
        for field in Geometry._fields:
            head[field] = getattr(geometry, field)
        head["header_bytes"] = layout.HEADER.itemsize
        head["generation"] = now_ns if generation is None else generation
        head["created_ns"] = now_ns
        head["heartbeat_ns"] = now_ns
        head["heartbeat_period_ns"] = int(heartbeat_period_s * 1e9)
        head["owner_pid"] = os.getpid()
        head["state"] = layout.STATE_LIVE
        head["layout_hash"] = layout.LAYOUT_HASH
        head["layout_version"] = layout.LAYOUT_VERSION
        head["magic"] = layout.MAGIC  # last: a reader that sees the magic sees the rest

    # -- use ---------------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        return int(self.header[0]["generation"])

    def books(self) -> list[BookDesc]:
        g = self.geometry
        descs = np.frombuffer(self.map, layout.BOOK_DESC, count=g.books_n, offset=g.descs_offset)
        return [BookDesc(d["exchange"].decode(), d["symbol"].decode(), d["native"].decode(),
                         int(d["shard_index"])) for d in descs]

    def writer(self, shard_index: int, *, wake: str = "auto", wake_ahead: bool = True):
        """The writer of one shard's books and ring; one per shard per process.

        `wake`: how its flushes wake clients, "auto", "eventfd" or "io_uring" (observer/shm/wake.py);
        `wake_ahead`: whether `writer.wake_ahead()` writes (PROTOCOL.md, Wake-ups). Both are
        taken when the writer is made.
        """
        from observer.shm.writer import ShardWriter  # writer imports this module

        if not 0 <= shard_index < self.geometry.shards_n:
            raise ValueError(f"shard_index {shard_index} outside 0..{self.geometry.shards_n - 1}")
        if shard_index not in self._writers:
            self._writers[shard_index] = ShardWriter(self, shard_index, wake=wake,
                                                       wake_ahead=wake_ahead)
        return self._writers[shard_index]

    def heartbeat(self, now_ns: int | None = None) -> None:
        """Bump the header heartbeat (C9); the owner calls this every heartbeat period."""
        self.header[0]["heartbeat_ns"] = time.time_ns() if now_ns is None else now_ns

    def set_clients(self, clients_n: int) -> None:
        """Store the number of attached clients (the supervisor, at its heartbeat): shard
        writers in wake mode auto choose how to wake them from it."""
        self.header[0]["clients_n"] = clients_n

    def reader_fd(self) -> int:
        """A new O_RDONLY fd on the segment for a client (C8); the caller closes it."""
        if self.name is None:
            raise ValueError("reader_fd needs the segment name; this segment was attached by fd")
        shm = posix_ipc.SharedMemory(_posix_name(self.name), 0, read_only=True)
        return shm.fd

    def mark_closed(self) -> None:
        """Tell readers the observer shut down cleanly (they reattach to the next segment)."""
        self.header[0]["state"] = layout.STATE_CLOSED

    def close(self) -> None:
        """Unmap and close our fds (eventfds only if we created them). Idempotent."""
        for writer in self._writers.values():
            writer.release()
        self._writers.clear()
        self.header = None
        if not self.map.closed:
            try:
                self.map.close()
            except BufferError:
                pass  # a caller still holds a view; the mapping goes when that view does
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self._owner:
            for fd in self.eventfds:
                os.close(fd)
        self.eventfds = []

    def unlink(self) -> None:
        """Remove the name; mappings already made stay valid until unmapped."""
        if self.name is not None:
            try:
                posix_ipc.unlink_shared_memory(_posix_name(self.name))
            except posix_ipc.ExistentialError:
                pass

    def __enter__(self) -> "Segment":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
        if self._owner:
            self.unlink()


def _posix_name(name: str) -> str:
    return name if name.startswith("/") else "/" + name


def _check_descs(book_descs: list[BookDesc], shards_n: int) -> None:
    for index, desc in enumerate(book_descs):
        if not 0 <= desc.shard_index < shards_n:
            raise LayoutError(f"book {index} ({desc.symbol}) on shard {desc.shard_index}, "
                              f"outside 0..{shards_n - 1}")
        for field, limit in layout.NAME_BYTES_MAX.items():
            value = getattr(desc, field).encode()
            if len(value) > limit:
                raise LayoutError(f"book {index} {field} {value!r} longer than {limit} bytes")
