"""Following the update rings: a cursor per shard, overrun detection, resync from the slots.

Why this shape. Each shard appends a fixed-size record per book change into its own ring
(C5), and never waits for anyone. A follower keeps its own position per ring; when the writer
has gone a whole ring past it (the reader was slow, stopped or swapped out), the follower sees
it from the sequence numbers, counts an overrun, jumps to the head and, for every book of that
shard, emits a KIND_RESYNC record read from the book's slot, so the caller's view is whole
again without ever having slowed the writer.

A record and a resync may describe the same change twice (the slot can be newer than records
still ahead in the ring); `book_seq` orders them: callers that care drop a record whose
`book_seq` is not above the last one they saw for that book.

Waiting (C6): `wait` checks the rings, blocks in the reader's epoll, then checks again, so an
update that lands between the check and the sleep is never missed (its wake-up edge is queued
in the epoll already). `spin` busy-polls the heads with loads only, for pinned clients.
"""

from __future__ import annotations

import struct
import time

from obproto import latch, layout

from obproto.snapshot import Update

RECORDS_PER_POLL_MAX = 4096  # records taken per poll, so one call is bounded
SPIN_CHECK_CLOCK_EVERY = latch.SPIN_CHECK_CLOCK_EVERY  # busy-poll iterations between clock reads
SPIN_SLICE_NS = 1_000_000  # a head spin returns to the interpreter this often (threads, signals)
WAKE_AHEAD_SPIN_MAX_NS = 200_000  # a client woken ahead of a publish spins this long at most
_RECORD_BODY = struct.Struct(layout.RECORD_BODY_FORMAT)
assert len(Update._fields) == len(_RECORD_BODY.unpack(bytes(_RECORD_BODY.size)))


class UpdateFollower:
    """Follows the rings of some shards of a `SegmentReader`. Get one from `reader.follow()`."""

    def __init__(self, reader, shard_indexes: list[int], *, from_oldest: bool = False):
        g = reader.geometry
        self._reader = reader
        self._words = reader._words
        self._mv = reader._mv
        self._mask = g.ring_records - 1
        self._ring_records = g.ring_records
        self.shard_indexes = list(shard_indexes)
        self._head_word = [reader.shard_word(i, "head") for i in self.shard_indexes]
        self._ahead_word = [reader.shard_word(i, "wake_ahead") for i in self.shard_indexes]
        self._ring_word0 = [(g.rings_offset + i * g.ring_bytes) // 8 for i in self.shard_indexes]
        self._books_of = [[b.book_index for b in reader.books() if b.shard_index == i]
                          for i in self.shard_indexes]
        self._record_type = reader.record_type
        readers = [latch.ring_reader(self._words, self._mv, word0, self._mask, head, _RECORD_BODY,
                                     self._record_type)
                   for word0, head in zip(self._ring_word0, self._head_word)]
        self._read = [r[0] for r in readers]
        self._take = [r[1] for r in readers]
        self._spin = [r[2] for r in readers]
        self._spin_take = [r[3] for r in readers]
        heads = [self._words[w] for w in self._head_word]
        self._pos = [max(0, h - g.ring_records) if from_oldest else h for h in heads]
        self._ring_ks = range(len(self.shard_indexes))
        self._single = len(self.shard_indexes) == 1
        self._backlog: list[Update] = []  # spin_next: records taken by a poll, not yet handed out
        self.overruns = 0  # times a ring lapped this follower
        self.records = 0  # records delivered from the rings

    def pending(self) -> bool:
        """True when any followed ring has records this follower has not taken."""
        if self._backlog:
            return True
        words, pos, head_word = self._words, self._pos, self._head_word
        for k in self._ring_ks:
            if words[head_word[k]] != pos[k]:
                return True
        return False

    def poll(self, records_max: int = RECORDS_PER_POLL_MAX) -> list[Update]:
        """Take up to `records_max` records (plus resyncs after an overrun); never blocks."""
        out: list[Update] = []
        if self._backlog:  # records spin_next took and has not handed out yet come first
            out.extend(reversed(self._backlog))
            self._backlog.clear()
        if self._single:  # the common case, and the latency-critical one: no loop, no call
            pos = self._pos[0]
            new_pos, lapped = self._read[0](pos, out, records_max)
            self.records += new_pos - pos
            self._pos[0] = new_pos
            if lapped:
                self._resync(0, latch.ring_head(self._words, self._head_word[0]), out)
            return out
        for k in self._ring_ks:
            self._poll_ring(k, out, records_max)
        return out

    def _poll_ring(self, k: int, out: list, records_max: int) -> None:
        pos = self._pos[k]
        new_pos, lapped = self._read[k](pos, out, records_max - len(out))
        self.records += new_pos - pos
        self._pos[k] = new_pos
        if lapped:
            self._resync(k, latch.ring_head(self._words, self._head_word[k]), out)

    def _resync(self, k: int, head: int, out: list) -> None:
        """Lapped: skip to the head and re-read every book of the shard from its slot."""
        self.overruns += 1
        self._pos[k] = head
        for book_index in self._books_of[k]:
            snap = self._reader.snapshot(book_index, 1)
            bid = (int(snap.bid_px[0]), int(snap.bid_sz[0])) if snap.n_bids else (0, 0)
            ask = (int(snap.ask_px[0]), int(snap.ask_sz[0])) if snap.n_asks else (0, 0)
            out.append(self._record_type(
                book_index, layout.KIND_RESYNC, snap.flags, snap.price_exp, snap.size_exp,
                snap.seq, snap.update_id, snap.exch_ts_ns, snap.recv_ts_ns, snap.publish_ts_ns,
                *bid, *ask))

    def wait(self, timeout_s: float | None) -> bool:
        """Block until records are pending or `timeout_s` passes: check, poll, check again.

        Woken with nothing new while a shard says a publish is on its way (wake-ahead), it
        spins for it rather than sleep again (`spin_while_ahead`).
        """
        if self.pending():
            return True
        if not self._reader.wait(timeout_s):
            return self.pending()
        return self.pending() or self.spin_while_ahead()

    def spin_while_ahead(self) -> bool:
        """Spin (loads only) while a followed shard's `wake_ahead` word is set and nothing is
        new, at most WAKE_AHEAD_SPIN_MAX_S; True as soon as records are pending.

        The shard sets the word and writes its eventfd when a message arrives, before parsing
        it, and clears it when the batch is published: a client woken by that early write
        finds the record here about when its wake-up completes (PROTOCOL.md, Wake-ups).
        """
        words, ahead_word = self._words, self._ahead_word
        if not any(words[w] for w in ahead_word):
            return False
        deadline_ns = time.monotonic_ns() + WAKE_AHEAD_SPIN_MAX_NS
        while True:
            for _ in range(SPIN_CHECK_CLOCK_EVERY):
                if self.pending():
                    return True
            if not any(words[w] for w in ahead_word):
                return self.pending()
            if time.monotonic_ns() >= deadline_ns:
                return False

    def spin(self, timeout_s: float) -> bool:
        """Busy-poll the heads (no syscalls) until records are pending or `timeout_s` passes.

        It watches the shard's head word, not the next record's seq word: the writer stores
        the head once per record, after it, while it writes the record's line several times;
        a reader spinning on that line would take it away from the writer mid-record.
        """
        if self._single:
            return bool(self._backlog) or self._spin_head(self._pos[0], timeout_s)
        deadline_ns = time.monotonic_ns() + int(timeout_s * 1e9)
        while True:
            if self.pending():
                return True
            if time.monotonic_ns() >= deadline_ns:
                return False

    def spin_next(self, timeout_s: float) -> Update | None:
        """Busy-poll (no syscalls) for the next record; None after `timeout_s` without one.

        The lowest-latency way to follow one shard's ring, for a client pinned to its own
        core: the head spin and the record copy in one call, one record per call.
        """
        return self._next(timeout_s, True)

    def wait_next(self, timeout_s: float | None) -> Update | None:
        """Block in epoll (spinning while a publish is announced) for the next record; None
        after `timeout_s`, or when a registered fd (the control socket) woke the wait.

        `wait` + `poll` in one call, one record per call, with fewer steps between the
        wake-up and the record: each step costs most right after a sleep (cold caches).
        """
        return self._next(timeout_s, False)

    def _next(self, timeout_s: float | None, spin: bool) -> Update | None:
        """One record for spin_next / wait_next. Following several rings, or after a lap, it
        takes `poll()`'s way and returns the first record (the rest are returned by the next
        calls, in order, or by `poll()`)."""
        if self._backlog:
            return self._backlog.pop()
        if self._single:
            pos, words, head = self._pos[0], self._words, self._head_word[0]
            if spin:
                update = self._spin_take_sliced(pos, timeout_s)
                if update is None:
                    return None
            else:
                if words[head] == pos:
                    self._reader.wait(timeout_s)
                    if words[head] == pos and not self.spin_while_ahead():
                        return None
                update = self._take[0](pos)
            if update is not None and update is not latch.LAPPED:
                self._pos[0] = pos + 1
                self.records += 1
                return update
        elif not (self.spin(timeout_s) if spin else self.wait(timeout_s)):
            return None
        batch = self.poll()
        if not batch:
            return None
        self._backlog = batch[:0:-1]  # the rest, reversed: pop() hands them out in order
        return batch[0]

    def _spin_head(self, pos: int, timeout_s: float) -> bool:
        """The single ring's head spin (client/obproto/latch ring_reader's spin) in slices."""
        return self._sliced(self._spin[0], pos, timeout_s) is not None

    def _spin_take_sliced(self, pos: int, timeout_s: float):
        """The single ring's spin-then-take (ring_reader's spin_take) in slices."""
        return self._sliced(self._spin_take[0], pos, timeout_s)

    @staticmethod
    def _sliced(spin, pos: int, timeout_s: float):
        """`spin(pos, spin_ns)` for up to `timeout_s`, in slices of at most SPIN_SLICE_NS, so
        other threads and signal handlers run between them, as they would in a Python loop.
        Returns what it returned first that is neither None nor False, else None."""
        timeout_ns = int(timeout_s * 1e9)
        deadline_ns = time.monotonic_ns() + timeout_ns
        got = spin(pos, min(SPIN_SLICE_NS, timeout_ns))
        if got is not None and got is not False:
            return got
        while (left_ns := deadline_ns - time.monotonic_ns()) > 0:
            got = spin(pos, min(SPIN_SLICE_NS, left_ns))
            if got is not None and got is not False:
                return got
        return None

    def updates(self, timeout_s: float | None = None):
        """Yield records as they arrive (blocking in epoll); return after `timeout_s` idle."""
        while True:
            batch = self.poll()
            if batch:
                yield from batch
                continue
            if not self.wait(timeout_s):
                return
