"""The shard writer: publishes its books into their slots, appends to its ring, signals once.

Why this shape. A shard is the only writer of its books' slots and of its ring (C1), so the
writer keeps its own copy of every sequence number and never reads one back. Everything a
publish touches is located at construction: for each book and each of its two copies, four
int64 numpy views that `book.export_top` fills directly, and the word offsets of the copy head,
the stats and the ring. A publish is then `export_top`, one `struct.pack_into` for the copy
head, the latch flip, one `pack_into` for the ring record and a few word stores: no array, list
or dict is created once warm (tests/shm/test_writer.py checks this with tracemalloc).

Batching (C6): publishes only append records; `flush()` writes the shard's eventfd once if any
was appended since the last flush (the writer compares the ring position with the one it
flushed at, so a publish does no bookkeeping of its own), however many books changed and
however many clients wait. The feed driver calls it once per read from the network, before it
may wait for the next (observer/feeds/session.py). `wake_ahead()` writes it once more when the
first message of such a batch arrives, before it is parsed, so that waking sleeping clients
overlaps parsing and publishing (PROTOCOL.md).

Wake groups (observer/shm/wakegroups.py). A shard has WAKE_GROUPS eventfds and each client
waits on one of them; the board word says which groups have clients (group 0 always counts:
the supervisor's own reader). Unpaced, a flush writes every group in use, one write each: with
fewer than WAKE_GROUP_CLIENTS clients that is group 0 alone, one write, as before groups.

Pacing (many clients). A wake-up is not free for the machine: the kernel wakes every waiting
client (about 3 µs each, through its wake fd), and each woken client spends 15-40 µs of CPU
(a Python reader) before it sleeps again; 256 clients woken 1000 times a second would need
five CPUs or more, and on two their wake-ups crowd out the shard itself (bench/fanout.py). So
once a pacer is attached (`pace_wakes`, the shard does it) and at least PACE_CLIENTS_MIN
clients are attached, every client is woken at most once per wake gap,
`clients_n * gap_ns_per_client`: a wake-up writes every group in use and the next waits a gap.
From ROTATE_CLIENTS_MIN clients, where waking them all at once would keep the shard waiting
for a CPU behind all of them, a wake-up writes one group, the next in use that has records it
was not told about, in turn, and the next write waits a slot: the gap divided by the number of
groups in use. So every group is still woken at most once per gap, every record is announced
to every group within a turn of slots after its publish, and one write makes at most a
group's clients runnable: the shard, woken for its next message, waits behind a few readers.
A slot lasts at least the loop's timer tick (epoll waits in milliseconds), so with many groups
a turn can outlast the gap: 17 groups at 256 clients and 40 µs a client take 17-20 ms, not 10.
A flush inside a gap or slot only records that a wake-up is owed, and the pacer pays it at its
end (`flush_owed`), or a flush after the end does. The CPU all clients spend waking stays below
a fixed share whatever the publish rate (40 µs per client and ~20-36 µs per client wake-up:
half a CPU to one). Wake-ahead is off while pacing: it would wake every client early to spin
for a record (PROTOCOL.md).

The order of stores that makes readers safe is in client/obproto/latch.py; this module only says what
goes into a copy and a record.
"""

from __future__ import annotations

import os
import struct
import time

import numpy as np

from observer.shm.wake import PACE_CLIENTS_MIN, ROTATE_CLIENTS_MIN, ShardWaker
from observer.shm.wakegroups import WAKE_GROUPS
from obproto import latch, layout
from obproto.layout import CopyHead, RecordBody

_COPY_HEAD = struct.Struct(layout.COPY_HEAD_FORMAT)
_RECORD_BODY = struct.Struct(layout.RECORD_BODY_FORMAT)
_STAT_WORD = {name: i for i, name in enumerate(layout.BOOK_STATS_FIELDS)}
_WORD_BYTES = 8
_STAT_LAST_UPDATE = _STAT_WORD["last_update_ns"]
_STAT_LAST_RECV = _STAT_WORD["last_recv_ns"]
_STAT_LAST_EXCH = _STAT_WORD["last_exch_ts_ns"]
assert _STAT_WORD["updates"] == 0
_NOTE_OFFSET = layout.COPY_HEAD.fields["note"][1]
# flags by (stale + 2 * lagging)
_FLAGS = tuple(layout.FLAG_PUBLISHED | (layout.FLAG_STALE if k & 1 else 0)
               | (layout.FLAG_LAGGING if k & 2 else 0) for k in range(4))
_GROUP_MASK = WAKE_GROUPS - 1
_GROUPS = range(WAKE_GROUPS)


class ShardWriter:
    """Writes one shard's books and ring. Get one from `Segment.writer(shard_index)`."""

    def __init__(self, segment, shard_index: int, *, wake: str = "auto",
                 wake_ahead: bool = True):
        g = segment.geometry
        self.shard_index = shard_index
        self.depth_max = g.depth_max
        self._map = memoryview(segment.map)
        self._words = self._map.cast("Q")  # sequence words, heads (unsigned)
        self._swords = self._map.cast("q")  # counters and timestamps (signed)
        self._wakers = [ShardWaker(fd, wake) for fd in segment.group_eventfds(shard_index)]
        self._group_wake = [waker.wake for waker in self._wakers]  # observer/shm/wake.py
        self._wake = self._group_wake[0]
        self._board = segment.board_words  # [0]: the wake groups that have clients
        self._clients_index = layout.HEADER.fields["clients_n"][1] // _WORD_BYTES
        descs = segment.books()
        self._owned = [d.shard_index == shard_index for d in descs]
        self.book_indexes = [i for i, mine in enumerate(self._owned) if mine]
        self._locate_slots(segment, g)
        self._stats_word0 = [(g.stats_offset + i * layout.BOOK_STATS.itemsize) // _WORD_BYTES
                             for i in range(g.books_n)]
        self._locate_ring(g)
        self._flushed_pos = self._ring_pos[0]  # records every group was told about
        self._told = [self._flushed_pos] * WAKE_GROUPS  # per group, while pacing
        self._turn = 0  # the group a paced wake-up tries first
        self._rotate = False  # paced wake-ups go one group at a time (heartbeat, clients_n)
        self._publish = [self._publisher(i) if mine else None for i, mine in enumerate(self._owned)]
        shard_word0 = (g.shards_offset + shard_index * layout.SHARD.itemsize) // _WORD_BYTES
        self._heartbeat_index = shard_word0 + layout.SHARD.fields["heartbeat_ns"][1] // 8
        self._flushes_index = shard_word0 + layout.SHARD.fields["flushes"][1] // 8
        self._ahead_index = shard_word0 + layout.SHARD.fields["wake_ahead"][1] // 8
        self._ahead = False
        self._ahead_enabled = wake_ahead
        self._gap_ns_per_client = 0  # pacing (module essay): 0 until pace_wakes()
        self._wake_gap_ns = 0  # least time between two wake-ups now (heartbeat, from clients_n)
        self._wake_next_ns = 0  # monotonic ns before which a flush defers its wake-up
        self._owed = False  # a flush deferred its wake-up; the pacer calls flush_owed()
        self._on_owed = None  # the pacer's callback: on_owed(due_monotonic_ns)
        self._words[self._ahead_index] = 0  # a restarted shard: no publish is on its way
        self._swords[shard_word0 + layout.SHARD.fields["writer_pid"][1] // 8] = os.getpid()
        self.heartbeat()

    def _locate_slots(self, segment, g) -> None:
        slots = np.frombuffer(segment.map, layout.slot_dtype(g.depth_max), count=g.books_n,
                              offset=g.slots_offset)
        copy_bytes = layout.copy_dtype(g.depth_max).itemsize
        copies_offset = layout.slot_dtype(g.depth_max).fields["copies"][1]
        self._seq_index: list[int] = []
        self._seq: list[int] = []
        self._views: list[tuple] = []  # per book: per copy (bid_px, bid_sz, ask_px, ask_sz)
        self._copy_bytes: list[tuple] = []  # per book: per copy, the whole copy as uint8
        self._head_offset: list[tuple] = []  # per book: per copy, byte offset of the copy head
        for i in range(g.books_n):
            slot_offset = g.slots_offset + i * g.slot_bytes
            self._seq_index.append(slot_offset // _WORD_BYTES)
            self._seq.append(self._words[slot_offset // _WORD_BYTES])  # resume after restart
            copies = slots[i]["copies"]
            self._views.append(tuple((c["bid_px"], c["bid_sz"], c["ask_px"], c["ask_sz"])
                                     for c in copies))
            offsets = tuple(slot_offset + copies_offset + k * copy_bytes for k in range(2))
            self._head_offset.append(offsets)
            raw = np.frombuffer(segment.map, np.uint8, count=g.slot_bytes, offset=slot_offset)
            base = copies_offset
            self._copy_bytes.append(tuple(raw[base + k * copy_bytes: base + (k + 1) * copy_bytes]
                                          for k in range(2)))
        self._bid0_word = layout.copy_dtype(g.depth_max).fields["bid_px"][1] // _WORD_BYTES
        self._ask0_word = layout.copy_dtype(g.depth_max).fields["ask_px"][1] // _WORD_BYTES
        self._szo_words = g.depth_max  # bid_sz[0] is depth_max words after bid_px[0]

    def _publisher(self, i: int):
        """Book i's hot path (client/obproto/latch.book_publisher), everything located once."""
        copies = tuple(latch.CopyPlace(head_offset=offset, views=views,
                                       bid0_word=offset // _WORD_BYTES + self._bid0_word,
                                       ask0_word=offset // _WORD_BYTES + self._ask0_word)
                       for offset, views in zip(self._head_offset[i], self._views[i]))
        return latch.book_publisher(
            words=self._words, swords=self._swords, buf=self._map, book_index=i,
            seq_index=self._seq_index[i], copies=copies, depth_max=self.depth_max,
            ring=latch.RingPlace(word0=self._ring_word0, mask=self._ring_mask,
                                 head_index=self._head_index),
            seqs=self._seq, ring_pos=self._ring_pos,
            stats=latch.StatPlaces(word0=self._stats_word0[i], last_update=_STAT_LAST_UPDATE,
                                   last_recv=_STAT_LAST_RECV, last_exch=_STAT_LAST_EXCH))

    def _locate_ring(self, g) -> None:
        shard_offset = g.shards_offset + self.shard_index * layout.SHARD.itemsize
        self._head_index = shard_offset // _WORD_BYTES
        self._ring_pos = [self._words[self._head_index]]  # resume after restart; shared with
        # every book's publisher (client/obproto/latch.book_publisher), which advances it
        self._ring_offset = g.rings_offset + self.shard_index * g.ring_bytes
        self._ring_word0 = self._ring_offset // _WORD_BYTES
        self._ring_mask = g.ring_records - 1

    # -- publishing ----------------------------------------------------------------------------

    def publish(self, book_index: int, book, *, stale: bool = False, lagging: bool = False,
                recv_ts_ns: int = 0) -> int:
        """Publish `book`'s top levels into slot `book_index` and append a ring record.

        Returns the slot's new sequence number. The caller flushes once per batch.
        """
        publish = self._publish[book_index]
        if publish is None:
            raise ValueError(f"book {book_index} does not belong to shard {self.shard_index}")
        return publish(book, _FLAGS[stale + 2 * lagging], recv_ts_ns)

    def publisher(self, book_index: int):
        """Book `book_index`'s hot path itself: `publish(book, flags, recv_ts_ns) -> seq`, the
        same as `publish` without its Python frame (flags from `flags()`), for a caller that
        publishes per message (observer/shard/exchangefeed.py)."""
        publish = self._publish[book_index]
        if publish is None:
            raise ValueError(f"book {book_index} does not belong to shard {self.shard_index}")
        return publish

    @staticmethod
    def flags(stale: bool = False, lagging: bool = False) -> int:
        """The copy flags a publish sets (always FLAG_PUBLISHED)."""
        return _FLAGS[stale + 2 * lagging]

    def mark_stale(self, book_index: int) -> int:
        """Republish the visible copy with the stale flag, and append a STALE record."""
        if not self._owned[book_index]:
            raise ValueError(f"book {book_index} does not belong to shard {self.shard_index}")
        publish_ts_ns = time.time_ns()
        seq_next = self._seq[book_index] + 1
        copies = self._copy_bytes[book_index]
        copies[seq_next & 1][:] = copies[1 - (seq_next & 1)]  # the visible copy, bulk
        head = CopyHead._make(_COPY_HEAD.unpack_from(self._map,
                                                     self._head_offset[book_index][seq_next & 1]))
        flags = head.flags | layout.FLAG_STALE | layout.FLAG_PUBLISHED
        self._commit(book_index, seq_next, layout.KIND_STALE,
                     head._replace(book_seq=seq_next, flags=flags, publish_ts_ns=publish_ts_ns))
        self._swords[self._stats_word0[book_index] + _STAT_WORD["stale_marks"]] += 1
        return seq_next

    def mark_invalid(self, book_index: int, note: str) -> int:
        """Publish the book empty, stale and invalid: the exchange refused its symbol. `note`
        (the exchange's reason) goes into the copy head before the flag is made visible, so a
        reader that sees FLAG_INVALID reads a whole note; it is never changed after."""
        if not self._owned[book_index]:
            raise ValueError(f"book {book_index} does not belong to shard {self.shard_index}")
        seq_next = self._seq[book_index] + 1
        head_offset = self._head_offset[book_index][seq_next & 1]
        self._map[head_offset + _NOTE_OFFSET:head_offset + _NOTE_OFFSET + layout.NOTE_BYTES_MAX] = \
            note_bytes(note)
        flags = layout.FLAG_PUBLISHED | layout.FLAG_STALE | layout.FLAG_INVALID
        self._commit(book_index, seq_next, layout.KIND_STALE,
                     CopyHead(book_seq=seq_next, n_bids=0, n_asks=0, price_exp=0, size_exp=0,
                              flags=flags, update_id=0, exch_ts_ns=0, recv_ts_ns=0,
                              publish_ts_ns=time.time_ns()))
        self._swords[self._stats_word0[book_index] + _STAT_WORD["stale_marks"]] += 1
        return seq_next

    def _commit(self, book_index: int, seq_next: int, kind: int, head: CopyHead) -> None:
        """Make the idle copy visible and append its ring record (order: client/obproto/latch.py)."""
        copy_offset = self._head_offset[book_index][seq_next & 1]
        s = self._swords
        bid = copy_offset // _WORD_BYTES + self._bid0_word
        ask = copy_offset // _WORD_BYTES + self._ask0_word
        record = RecordBody(
            book_index=book_index, kind=kind, flags=head.flags, price_exp=head.price_exp,
            size_exp=head.size_exp, book_seq=seq_next, update_id=head.update_id,
            exch_ts_ns=head.exch_ts_ns, recv_ts_ns=head.recv_ts_ns,
            publish_ts_ns=head.publish_ts_ns,
            bid_px=s[bid] if head.n_bids else 0, bid_sz=s[bid + self._szo_words] if head.n_bids else 0,
            ask_px=s[ask] if head.n_asks else 0, ask_sz=s[ask + self._szo_words] if head.n_asks else 0)
        pos = self._ring_pos[0]
        record_offset = self._ring_offset + (pos & self._ring_mask) * layout.RING_RECORD.itemsize
        latch.publish_commit(self._words, self._map, self._seq_index[book_index], seq_next,
                             _COPY_HEAD, copy_offset, head, record_offset // _WORD_BYTES,
                             _RECORD_BODY, record, self._head_index, pos)
        self._seq[book_index] = seq_next
        self._ring_pos[0] = pos + 1

    def wake_ahead(self) -> None:
        """Messages arrived and publishes may follow: start waking clients now.

        Waking a sleeping client takes about as long here as parsing and publishing (tens of
        µs, mostly bringing an idle vCPU back), so the shard calls this before it parses the
        first message of a read, and the two overlap. `wake_ahead` = 1 tells a client woken
        early to spin for the record (PROTOCOL.md, Wake-ups); the flush after the batch clears
        it and wakes anyone who went back to sleep. One write per batch: skipped while a
        wake-ahead is already out or a batch is being published (its flush is due), and when
        turned off (`wake_ahead=False`: only busy-polling clients, which it would only delay
        by a system call).
        """
        if (self._ahead or self._ring_pos[0] != self._flushed_pos or not self._ahead_enabled
                or self._wake_gap_ns):
            return
        self._ahead = True
        self._words[self._ahead_index] = 1  # before the write: a woken client sees it
        self._wake_groups()                 # not counted in `flushes`: writes after batches

    def flush(self) -> bool:
        """Wake every waiting client if anything was published (one eventfd write per wake
        group in use), and end a wake-ahead (also when nothing was published: then no one
        waits for a record).

        While pacing (module essay) a flush writes every group in use, or from
        ROTATE_CLIENTS_MIN clients the next group in turn, and nothing inside the gap (slot)
        since the last write: the first such flush calls the pacer's `on_owed(due_ns)`, which
        calls `flush_owed(due_ns)` at `due_ns` (monotonic), unless a flush after its end pays
        it first. True when something was published."""
        if self._ahead:
            self._ahead = False
            self._words[self._ahead_index] = 0
        pos = self._ring_pos[0]
        if pos == self._flushed_pos:
            return False
        if self._wake_gap_ns:
            now_ns = time.monotonic_ns()
            if now_ns >= self._wake_next_ns:
                self._owed = False
                self._wake_paced(pos, now_ns)
            elif not self._owed:
                self._owe()
            return True
        self._owed = False
        self._flushed_pos = pos
        self._words[self._flushes_index] += self._wake_groups()
        return True

    def _wake_groups(self) -> int:
        """One eventfd write per wake group in use (group 0 alone: the one write of old);
        returns the writes made."""
        groups = self._board[0] | 1
        if groups == 1:
            try:
                self._wake()
            except BlockingIOError:
                pass  # counter saturated (2**64 - 2 unread writes): a wake-up is pending
            return 1
        writes = 0
        for group in _GROUPS:
            if groups >> group & 1:
                self._wake_group(group)
                writes += 1
        return writes

    def _wake_group(self, group: int) -> None:
        try:
            self._group_wake[group]()
        except BlockingIOError:
            pass  # as in _wake_groups

    def _wake_paced(self, pos: int, now_ns: int) -> None:
        """Paced, at the end of a gap (or slot): below ROTATE_CLIENTS_MIN clients every group
        in use, the next write a gap later; from there the next group in use, in turn, that
        was not told about `pos`, the next write a slot later, owed if another still was not
        told (module essay)."""
        if not self._rotate:
            self._words[self._flushes_index] += self._wake_groups()
            self._wake_next_ns = now_ns + self._wake_gap_ns
            self._flushed_pos = pos  # self._told stays behind: at worst one spare write
            return
        groups = self._board[0] | 1
        told = self._told
        for step in _GROUPS:
            group = (self._turn + step) & _GROUP_MASK
            if groups >> group & 1 and told[group] != pos:
                told[group] = pos
                self._turn = group + 1
                self._wake_group(group)
                self._words[self._flushes_index] += 1
                self._wake_next_ns = now_ns + self._wake_gap_ns // groups.bit_count()
                break
        for group in _GROUPS:
            if groups >> group & 1 and told[group] != pos:
                self._owe()
                return
        self._flushed_pos = pos

    def _owe(self) -> None:
        self._owed = True
        self._on_owed(self._wake_next_ns)

    def pace_wakes(self, gap_ns_per_client: int, on_owed) -> None:
        """Pace wake-ups from PACE_CLIENTS_MIN attached clients on (module essay): each wake
        group at most once per `clients_n * gap_ns_per_client` ns, the groups in turn from
        ROTATE_CLIENTS_MIN clients (0: never pace). `on_owed(due_ns)` is called once per
        deferred wake-up, and must make `flush_owed(due_ns)` run at monotonic `due_ns`. Takes
        effect at the next heartbeat, where the client count is read."""
        assert gap_ns_per_client >= 0
        assert on_owed is not None or gap_ns_per_client == 0
        self._gap_ns_per_client = gap_ns_per_client
        self._on_owed = on_owed

    def flush_owed(self, due_ns: int) -> bool:
        """The pacer's call at `due_ns`, the due time `on_owed` gave it: write the next group
        now if that wake-up is still owed. A flush since may have paid it and owe the next
        one, later (then `on_owed` was called again): nothing now. True when it wrote."""
        if not self._owed or due_ns < self._wake_next_ns:
            return False
        self._owed = False
        pos = self._ring_pos[0]
        if pos == self._flushed_pos:
            return False
        self._wake_paced(pos, time.monotonic_ns())
        return True

    @property
    def wake_gap_ns(self) -> int:
        """The least time between two wake-ups now (0: not pacing)."""
        return self._wake_gap_ns

    def heartbeat(self, now_ns: int | None = None) -> None:
        """Bump this shard's heartbeat (C9); the shard calls it at its heartbeat period.

        Also where wake mode auto and pacing follow the number of attached clients (segment
        header)."""
        self._swords[self._heartbeat_index] = time.time_ns() if now_ns is None else now_ns
        clients_n = self._words[self._clients_index]
        groups = self._board[0] | 1
        for group, waker in enumerate(self._wakers):
            if groups >> group & 1:  # a group not in use keeps the plain write: no ring made
                self._group_wake[group] = waker.choose(clients_n)
        self._wake = self._group_wake[0]
        self._wake_gap_ns = (clients_n * self._gap_ns_per_client
                             if clients_n >= PACE_CLIENTS_MIN else 0)
        self._rotate = clients_n >= ROTATE_CLIENTS_MIN

    def book_stats(self, book_index: int) -> "BookStats":
        """The counters of one book, living in the segment, for the shard to update."""
        if not self._owned[book_index]:
            raise ValueError(f"book {book_index} does not belong to shard {self.shard_index}")
        return BookStats(self._swords, self._stats_word0[book_index])

    def seq(self, book_index: int) -> int:
        return self._seq[book_index]

    def release(self) -> None:
        """Drop every view of the mapping so the segment can be unmapped."""
        self._views = []
        self._publish = []
        self._copy_bytes = []
        for waker in self._wakers:
            waker.close()
        self._group_wake = []
        self._board = None
        self._words.release()
        self._swords.release()
        self._map.release()


class BookStats:
    """Attribute access to one book's int64 counters: `stats.gaps += 1` is two word accesses."""

    __slots__ = ("_words", "_word0")

    def __init__(self, words, word0: int):
        self._words = words
        self._word0 = word0

    def as_dict(self) -> dict[str, int]:
        return {name: self._words[self._word0 + i]
                for i, name in enumerate(layout.BOOK_STATS_FIELDS)}

    def word(self, name: str) -> tuple[memoryview, int]:
        """(words, index) of one counter, for a per-message store `words[index] = value`
        without the property's two calls (one aligned word store: client/obproto/latch.store_word)."""
        return self._words, self._word0 + _STAT_WORD[name]


def _stat_property(word: int) -> property:
    def get(self) -> int:
        return self._words[self._word0 + word]

    def put(self, value: int) -> None:
        latch.store_word(self._words, self._word0 + word, value)

    return property(get, put)


for _name, _word in _STAT_WORD.items():
    setattr(BookStats, _name, _stat_property(_word))


def note_bytes(note: str) -> bytes:
    """`note` as the copy head's field: UTF-8, NUL padded; a longer one is cut at a character
    boundary and ends in an ellipsis (the log line has it whole)."""
    data = note.encode("utf-8", "replace")
    if len(data) > layout.NOTE_BYTES_MAX:
        ellipsis = "\u2026".encode()
        data = data[:layout.NOTE_BYTES_MAX - len(ellipsis)].decode("utf-8", "ignore").encode()
        data += ellipsis
    return data.ljust(layout.NOTE_BYTES_MAX, b"\0")
