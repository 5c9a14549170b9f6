"""The segment reader: maps observer's segment read-only and takes consistent copies.

Why this module. A strategy gets two things from the observer's control socket: an `O_RDONLY`
fd on the shared-memory segment (a sealed memfd) and one wake fd per shard. `SegmentReader`
maps the fd with `PROT_READ` (writing through any view raises; the fd cannot be mapped
writable, and the segment's seals refuse every other way to write it, C8), refuses a segment
whose magic, version or layout hash it does not know (C2), and then reads:

- `snapshot(book_index, depth)`: a consistent copy of a book through the two-copy latch (C4);
  the load order lives in client/obproto/latch.py.
- `follow(...)` (client/obproto/updates.py): ring cursors over the shards' update rings (C5).
- `wait(timeout_s)`: one epoll, EPOLLET on every wake fd, never `read()` (C6), plus any fd the
  caller registers (the control socket, so a dead observer wakes the wait at once). A wake fd
  is pollable and nothing more: the observer passes a private epoll instance per shard that
  watches the shard's eventfd (a read of it would fail anyway); inside the observer, its own
  reader is given the eventfds themselves. Either way, one edge per shard flush.
- liveness: generation, state, header and shard heartbeats (C9); per-book stats for `obctl`.

It never writes to shared memory and never blocks the writer. It imports only `obproto` and
numpy, so a strategy links it without the server.
"""

from __future__ import annotations

import mmap
import os
import select
import struct
import time
from typing import NamedTuple

import numpy as np

from obproto import latch, layout
from obproto.layout import LayoutError

from obproto.snapshot import BookSnapshot, check_depth, named_update_type
from obproto.updates import UpdateFollower

_COPY_HEAD = struct.Struct(layout.COPY_HEAD_FORMAT)
_WORD_BYTES = 8
_HEADER_WORD = {name: layout.HEADER.fields[name][1] // _WORD_BYTES
                for name in ("generation", "heartbeat_ns", "heartbeat_period_ns", "owner_pid",
                             "state", "created_ns")}
_SHARD_WORD = {name: layout.SHARD.fields[name][1] // _WORD_BYTES
               for name in ("head", "heartbeat_ns", "writer_pid", "flushes", "wake_ahead")}
EPOLL_EVENTS_MAX = 64  # ready fds taken per wait


class BookInfo(NamedTuple):
    book_index: int
    exchange: str
    symbol: str
    native: str
    shard_index: int

    @property
    def name(self) -> str:
        return f"{self.exchange}:{self.symbol}"


class SegmentReader:
    """A read-only view of one observer segment. Not thread-safe; one per thread is cheap."""

    def __init__(self, shm_fd: int, wake_fds=(), *, own_fds: bool = False):
        """Map `shm_fd` read-only and wait on `wake_fds` (one per shard, or none). With
        `own_fds`, close() also closes shm_fd and wake_fds."""
        latch.require_tso()
        self._fds_owned = ([shm_fd, *wake_fds] if own_fds else [])
        size_bytes = os.fstat(shm_fd).st_size
        if size_bytes < layout.HEADER.itemsize:
            raise LayoutError(f"segment is {size_bytes} bytes, smaller than its header: "
                              f"not an observer segment")
        self.map = mmap.mmap(shm_fd, size_bytes, mmap.MAP_SHARED, mmap.PROT_READ)
        try:
            self.geometry = layout.check_header(self.map, size_bytes)
        except LayoutError:
            self.map.close()
            raise
        self._mv = memoryview(self.map)
        self._copies_offset = layout.slot_dtype(self.geometry.depth_max).fields["copies"][1]
        self._copy_bytes = layout.copy_dtype(self.geometry.depth_max).itemsize
        self._words = self._mv.cast("Q")
        self._swords = self._mv.cast("q")
        self.wake_fds = list(wake_fds)
        self._books = self._read_descs()
        self.record_type = named_update_type(b.name for b in self._books)  # records know names
        self._views: dict[int, tuple] = {}  # book_index -> per copy (bid_px, bid_sz, ...)
        self.epoll = select.epoll()
        for fd in self.wake_fds:
            # Edge-triggered and never read: every shard flush queues one edge in every
            # client's epoll, so no client can consume another's wake-up (C6).
            self.epoll.register(fd, select.EPOLLIN | select.EPOLLET)

    def _read_descs(self) -> list[BookInfo]:
        g = self.geometry
        descs = np.frombuffer(self.map, layout.BOOK_DESC, count=g.books_n, offset=g.descs_offset)
        return [BookInfo(i, d["exchange"].decode(), d["symbol"].decode(), d["native"].decode(),
                         int(d["shard_index"])) for i, d in enumerate(descs)]

    # -- books -------------------------------------------------------------------------------

    def books(self) -> list[BookInfo]:
        return list(self._books)

    def snapshot(self, book_index: int, depth: int | None = None) -> BookSnapshot:
        """A consistent copy of book `book_index`, at most `depth` levels a side (0 or None:
        all; `check_depth` says what else is refused)."""
        if not 0 <= book_index < self.geometry.books_n:
            raise IndexError(f"book_index {book_index} outside 0..{self.geometry.books_n - 1}")
        depth_max = self.geometry.depth_max
        depth = min(check_depth(depth) or depth_max, depth_max)
        seq, (head, arrays) = latch.latch_read(self._words, self._seq_word(book_index),
                                               self._read_copy, (book_index, depth))
        # A stable copy is the one published under this very sequence (the writer stores it in
        # the copy head before the flip); anything else is a protocol bug, never a race.
        assert head[0] == seq, f"book {book_index}: copy of seq {head[0]} read under seq {seq}"
        return BookSnapshot(book_index, seq, head, *arrays)

    def _read_copy(self, copy_index: int, request: tuple) -> tuple:
        book_index, depth = request
        head = _COPY_HEAD.unpack_from(self._mv, self._head_offset(book_index, copy_index))
        n_bids = min(max(head[1], 0), depth)  # clamped: a torn head is discarded by the latch
        n_asks = min(max(head[2], 0), depth)
        bid_px, bid_sz, ask_px, ask_sz = self._copy_views(book_index)[copy_index]
        return head, (bid_px[:n_bids].copy(), bid_sz[:n_bids].copy(), ask_px[:n_asks].copy(),
                      ask_sz[:n_asks].copy())

    def top(self, book_index: int) -> BookSnapshot:
        """The best level of each side, consistently (a snapshot of depth 1)."""
        return self.snapshot(book_index, 1)

    def _seq_word(self, book_index: int) -> int:
        g = self.geometry
        return (g.slots_offset + book_index * g.slot_bytes) // _WORD_BYTES

    def _head_offset(self, book_index: int, copy_index: int) -> int:
        g = self.geometry
        return (g.slots_offset + book_index * g.slot_bytes + self._copies_offset
                + copy_index * self._copy_bytes)

    def _copy_views(self, book_index: int) -> tuple:
        views = self._views.get(book_index)
        if views is None:
            g = self.geometry
            copy = layout.copy_dtype(g.depth_max)
            views = tuple(
                tuple(np.frombuffer(self.map, "<i8", count=g.depth_max,
                                    offset=self._head_offset(book_index, k) + copy.fields[f][1])
                      for f in ("bid_px", "bid_sz", "ask_px", "ask_sz"))
                for k in range(2))
            self._views[book_index] = views
        return views

    def book_stats(self, book_index: int) -> dict[str, int]:
        """The book's counters as the shard last stored them (each word read once)."""
        word0 = (self.geometry.stats_offset + book_index * layout.BOOK_STATS.itemsize) // 8
        return {name: self._swords[word0 + i] for i, name in enumerate(layout.BOOK_STATS_FIELDS)}

    # -- shards, rings and liveness ----------------------------------------------------------

    def shard_word(self, shard_index: int, name: str) -> int:
        g = self.geometry
        if not 0 <= shard_index < g.shards_n:
            raise IndexError(f"shard_index {shard_index} outside 0..{g.shards_n - 1}")
        return (g.shards_offset + shard_index * layout.SHARD.itemsize) // 8 + _SHARD_WORD[name]

    def ring_head(self, shard_index: int) -> int:
        return latch.ring_head(self._words, self.shard_word(shard_index, "head"))

    def shard_stats(self, shard_index: int) -> dict[str, int]:
        return {name: self._swords[self.shard_word(shard_index, name)] for name in _SHARD_WORD}

    @property
    def generation(self) -> int:
        return self._words[_HEADER_WORD["generation"]]

    @property
    def closed(self) -> bool:
        """The observer marked this segment closed (clean shutdown)."""
        return self._words[_HEADER_WORD["state"]] == layout.STATE_CLOSED

    def heartbeat_ns(self) -> int:
        return self._swords[_HEADER_WORD["heartbeat_ns"]]

    def heartbeat_period_ns(self) -> int:
        return self._swords[_HEADER_WORD["heartbeat_period_ns"]]

    def shard_heartbeat_ns(self, shard_index: int) -> int:
        return self._swords[self.shard_word(shard_index, "heartbeat_ns")]

    def heartbeat_age_s(self, now_ns: int | None = None) -> float:
        """Seconds since the owner's last heartbeat; compare with a few periods (C9)."""
        now_ns = time.time_ns() if now_ns is None else now_ns
        return (now_ns - self.heartbeat_ns()) / 1e9

    def follow(self, shard_indexes=None, *, from_oldest: bool = False):
        """An `UpdateFollower` over the given shards' rings (all by default)."""
        shards = range(self.geometry.shards_n) if shard_indexes is None else shard_indexes
        return UpdateFollower(self, list(shards), from_oldest=from_oldest)

    # -- waiting -----------------------------------------------------------------------------

    def register(self, fd: int, events: int = select.EPOLLIN | select.EPOLLHUP) -> None:
        """Wake `wait` on another fd too (the control socket: its hang-up ends a wait)."""
        self.epoll.register(fd, events)

    def wait(self, timeout_s: float | None) -> list[tuple[int, int]]:
        """Block until a wake fd edge or a registered fd is ready; [] after timeout_s.

        A wake-up is a hint: callers recheck shared memory before and after (see
        UpdateFollower.wait, which does check, poll, check).
        """
        while True:
            try:
                return self.epoll.poll(-1 if timeout_s is None else timeout_s, EPOLL_EVENTS_MAX)
            except InterruptedError:  # pragma: no cover - PEP 475 retries for us
                continue

    def fileno(self) -> int:
        """The epoll fd: readable when any shard signalled (for asyncio's add_reader)."""
        return self.epoll.fileno()

    def close(self) -> None:
        """Unmap, close the epoll and the fds we own. Idempotent."""
        if self.epoll.closed:
            return
        self.epoll.close()
        self._views.clear()
        self._words.release()
        self._swords.release()
        self._mv.release()
        try:
            self.map.close()
        except BufferError:
            pass  # a caller still holds a view; the mapping goes when that view does
        for fd in self._fds_owned:
            os.close(fd)
        self._fds_owned = []

    def __enter__(self) -> "SegmentReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
