"""The segment: one sealed memfd per observer instance, plus a shard's wake-group eventfds.

Why this module. The supervisor creates the segment once at start-up, sized from the book list
and the limits in `obproto.layout`, and never resizes it (a shrinking mapping kills readers with
SIGBUS, C9). It writes the header and book descriptors, then hands each shard a `ShardWriter`
(observer/shm/writer.py) for its own books and ring.

Why a memfd and not a POSIX shm name. `os.memfd_create` makes an anonymous file: it never has a
name in /dev/shm, so no other process can open it by name at any instant (not even in the
moment between creating and unlinking a name), and a kill -9 at any instant leaves nothing: the
kernel frees it with the last fd or mapping (C9).

Why sealed (C8). Once every process that writes holds its read-write mapping, `seal()` adds
F_SEAL_SHRINK, F_SEAL_GROW, F_SEAL_FUTURE_WRITE and F_SEAL_SEAL. From then on the mappings that
exist keep writing, and nothing else can: a writable shared mmap through any fd (an O_RDWR
reopen of /proc/self/fd/N included), write/pwrite, ftruncate, fallocate and mprotect to
PROT_WRITE are refused by the kernel, for root as well; the seals cannot be removed. A process
started after the seal can therefore never write the segment: shard processes are forked from
a zygote that mapped it before (observer/process/zygote.py). The file mode is `mode` (0o400 by
default: nobody has a reason to reopen it writable, even before the seal).

What a client gets (`client_fds()`, all new fds the caller closes once passed):
- an `O_RDONLY` reopen of the memfd (`reader_fd()`), its own open file description, which can
  only be mapped PROT_READ;
- per shard, a private epoll instance watching the eventfd of the client's wake group in that
  shard, level-triggered (`wake_fd()`; observer/shm/wakegroups.py says why groups). The eventfds themselves never leave the observer's processes: a client holding
  one could saturate it (2**64 - 2, so the shard's write fails and nobody wakes), read it in a
  loop, or clear O_NONBLOCK on its shared description so the shard's write blocks. Its epoll
  gives it the same edges (every eventfd write wakes every epoll watching it, and a client that
  registers the epoll fd in its own epoll with EPOLLET sees one edge per write), while read and
  write on an epoll fd are EINVAL, reopening it through /proc is refused, waiting on it consumes
  nothing (level-triggered), and whatever the client adds to it wakes only that client. The
  kernel frees it, and its watch on the eventfd, when the client's last copy goes.

Process model (C1). A process that inherited the read-write fd before the seal attaches with
`Segment.attach_fd(shm_fd, all_eventfds, board_fd)`, which validates the header like a reader
does; a forked process simply keeps the parent's mapping. `all_eventfds` is every shard's
WAKE_GROUPS eventfds, shard 0's first; `eventfds` is each shard's group 0 (the supervisor's
own reader waits on those); the board is the private word that says which groups have clients
(observer/shm/wakegroups.py).

Eventfds are created non-blocking, so a writer can never block on one, and no process outside
the observer holds them; nobody reads them (the observer's own reader waits with EPOLLET, C6),
so their counters only grow, by one per batch: 2**64 batches is out of reach.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import select
import time

import numpy as np

from obproto import latch, layout
from obproto.layout import BookDesc, Geometry, LayoutError
from observer.shm.wakegroups import WAKE_GROUPS, board_create, board_map
from observer.shm.writer import ShardWriter

HEARTBEAT_PERIOD_S_DEFAULT = 0.1
SEGMENT_MODE_DEFAULT = 0o400
# fcntl's module lacks F_SEAL_FUTURE_WRITE (Linux 5.1); the values are the kernel's ABI.
F_ADD_SEALS = 1033
F_GET_SEALS = 1034
F_SEAL_SEAL = 0x1
F_SEAL_SHRINK = 0x2
F_SEAL_GROW = 0x4
F_SEAL_FUTURE_WRITE = 0x10
SEALS = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE | F_SEAL_SEAL


class Segment:
    """A mapped segment (read-write) and its eventfds. Create with `create` or `attach_fd`."""

    def __init__(self, name: str | None, shm_fd: int, all_eventfds: list[int], board_fd: int,
                 owner: bool):
        latch.require_tso()
        self.name = name
        self.fd = shm_fd
        self.all_eventfds = list(all_eventfds)  # per shard, WAKE_GROUPS of them, group 0 first
        self.eventfds = self.all_eventfds[::WAKE_GROUPS]  # each shard's group 0
        self.board_fd = board_fd
        self._owner = owner  # created the eventfds and the board, so closes them
        self.board = board_map(board_fd)
        self.board_words = memoryview(self.board).cast("Q")  # [0]: wake groups with clients
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
        """Create the segment (a memfd; `name` is only its label in /proc), WAKE_GROUPS
        eventfds per shard and the wake-group board. It is not sealed yet: call `seal()` once
        every writer has mapped it."""
        geometry = layout.plan_geometry(len(book_descs), shards_n, depth_max, ring_records)
        _check_descs(book_descs, shards_n)
        shm_fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        fds: list[int] = []
        try:
            os.fchmod(shm_fd, mode)
            os.ftruncate(shm_fd, geometry.segment_bytes)
            fds.append(board_create(name))
            fds += [os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
                    for _ in range(shards_n * WAKE_GROUPS)]
            segment = cls(name, shm_fd, fds[1:], fds[0], owner=True)
        except BaseException:
            for fd in fds:
                os.close(fd)
            os.close(shm_fd)
            raise
        segment._init_header(geometry, book_descs, generation, heartbeat_period_s)
        return segment

    @classmethod
    def attach_fd(cls, shm_fd: int, all_eventfds: list[int], board_fd: int) -> "Segment":
        """Map an existing, not yet sealed segment read-write from an inherited fd (kept open:
        this takes its own dup), with the creator's `all_eventfds` and `board_fd`."""
        dup_fd = fcntl.fcntl(shm_fd, fcntl.F_DUPFD_CLOEXEC, 0)
        try:
            segment = cls(None, dup_fd, all_eventfds, board_fd, owner=False)
        except BaseException:
            os.close(dup_fd)
            raise
        try:
            segment.geometry = layout.check_header(segment.map, len(segment.map))
        except LayoutError:
            segment.close()
            raise
        if len(all_eventfds) != segment.geometry.shards_n * WAKE_GROUPS:
            segment.close()
            raise ValueError(f"{len(all_eventfds)} eventfds for {segment.geometry.shards_n} "
                             f"shards of {WAKE_GROUPS} wake groups")
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

    # -- sealing and what clients get ----------------------------------------------------------

    def seal(self) -> None:
        """Refuse every new way to write, resize or reseal the segment (module essay). Mappings
        made before keep writing. Once only, by the creator."""
        assert self._owner
        assert not self.sealed
        fcntl.fcntl(self.fd, F_ADD_SEALS, SEALS)
        assert self.sealed

    @property
    def sealed(self) -> bool:
        return self.fd >= 0 and fcntl.fcntl(self.fd, F_GET_SEALS) & SEALS == SEALS

    def reader_fd(self) -> int:
        """A new O_RDONLY fd on the sealed segment, its own open file description (C8).

        Sealed first: an fd handed out before the seal could be reopened O_RDWR through
        /proc/self/fd and mapped writable for good."""
        if not self.sealed:
            raise ValueError("reader_fd before seal(): a client could map the segment writable")
        return os.open(f"/proc/self/fd/{self.fd}", os.O_RDONLY | os.O_CLOEXEC)

    def group_eventfds(self, shard_index: int) -> list[int]:
        """Shard `shard_index`'s WAKE_GROUPS eventfds, group 0 first (its writer's)."""
        return self.all_eventfds[shard_index * WAKE_GROUPS:(shard_index + 1) * WAKE_GROUPS]

    def wake_fd(self, shard_index: int, group: int = 0) -> int:
        """A new epoll fd watching the eventfd of wake group `group` of shard `shard_index`,
        level-triggered (module essay): what a client waits on instead of the eventfd."""
        watch = select.epoll(1, select.EPOLL_CLOEXEC)
        try:
            watch.register(self.group_eventfds(shard_index)[group], select.EPOLLIN)
            return fcntl.fcntl(watch.fileno(), fcntl.F_DUPFD_CLOEXEC, 0)
        finally:
            watch.close()          # the dup keeps the instance

    def set_wake_groups(self, mask: int) -> None:
        """Store which wake groups have clients (bit g: group g; the supervisor, before it
        hands a client of a new group its fds)."""
        self.board_words[0] = mask

    def client_fds(self, group: int = 0) -> list[int]:
        """Everything one client of wake group `group` is handed: `reader_fd()`, then one
        `wake_fd` per shard, shard 0 first. All new; the caller closes them once passed (the
        client has its own copies)."""
        fds = [self.reader_fd()]
        try:
            for shard_index in range(len(self.eventfds)):
                fds.append(self.wake_fd(shard_index, group))
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return fds

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

    def close_fd(self) -> None:
        """Close the segment fd and keep the mapping: a process that writes through what it
        mapped and must hand nothing on (the zygote, before it forks shards)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

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
        self.close_fd()
        if self.board is not None:
            self.board_words.release()
            self.board.close()
            self.board = None
        if self._owner:
            for fd in (*self.all_eventfds, self.board_fd):
                os.close(fd)
        self.all_eventfds = []
        self.eventfds = []

    def __enter__(self) -> "Segment":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_descs(book_descs: list[BookDesc], shards_n: int) -> None:
    for index, desc in enumerate(book_descs):
        if not 0 <= desc.shard_index < shards_n:
            raise LayoutError(f"book {index} ({desc.symbol}) on shard {desc.shard_index}, "
                              f"outside 0..{shards_n - 1}")
        for field, limit in layout.NAME_BYTES_MAX.items():
            value = getattr(desc, field).encode()
            if len(value) > limit:
                raise LayoutError(f"book {index} {field} {value!r} longer than {limit} bytes")
