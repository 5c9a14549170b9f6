"""The ordering-sensitive code: how sequence words are stored and loaded (C4, C5).

Why one module. Everything else in the segment is plain data; correctness of concurrent reads
rests on the order of a handful of stores and loads, and that order lives here and nowhere
else, so it can be read, reviewed and tested in one sitting.

Memory model relied on: x86-64 (TSO). Stores become visible to other cores in program order,
and loads are not reordered with other loads. Python offers no fences, so this module is only
correct on such a machine; `require_tso` (called whenever a segment is mapped) refuses others.
The interpreter does not cache or reorder loads across separate Python operations: each
`words[i]` is a real load.

Every sequence word is an aligned u64 stored by its own `words[i] = v` on a memoryview cast to
"Q": CPython packs that with an 8-byte `memcpy`, one `mov` on x86-64, atomic when aligned. No
sequence word is ever written by the bulk copy (numpy or `struct.pack_into`) that writes data.
`struct.pack_into` zero-fills its whole range before writing the fields, so it may only write
bytes no reader trusts yet (an idle copy, a record whose seq word is 0); counters and
timestamps that readers take as they are get single word stores (`store_word`).

The book latch. A slot has one sequence word `seq` and two copies; readers use copy
`seq & 1`. A publish writes the whole visible state of the book (the top levels and the
scalars), so the writer needs only the first half of the kernel's `seqcount_latch`: it fills
the idle copy `(seq + 1) & 1`, which no reader that loaded `seq` is using, then stores
`seq + 1`, flipping readers to it. The next publish fills the other copy. A reader loads `seq`,
copies `seq & 1`, and keeps the copy only if `seq` is unchanged; otherwise the writer flipped
at least once meanwhile, and the publish after a flip rewrites the copy it was reading, so it
retries. It never waits on a writer mid-write (unlike a plain seqlock, where an odd sequence
sends every reader spinning), never blocks the writer, and only loads.

The ring. Record `pos` lives at `pos % ring_records`; its `seq` word is 0 while being written
and `pos + 1` once complete; the shard's `head` (records ever appended) is stored after the
record. A reader copies record `pos` between two loads of its `seq`: `pos + 1` both times is
a whole record (whatever the head says: `seq` is stored after the body), less means not written
yet, more (or a change between the loads) means the writer has lapped the reader (C5).

Wake-ups. The shard's eventfd write (ShardWriter.flush) comes after a batch's stores and is a
system call, so every store before it is visible to a reader the write wakes. Readers treat the
wake-up as a hint and always recheck the words here.

Two implementations of the hot paths. `book_publisher` and `ring_reader`'s take and spins are
also written in C (client/obproto/_latch_c.c), because a busy-polling client's latency is mostly the
interpreter's time on them: about 1.4 us to publish and 0.8 us to take a record here, against
0.5 and 0.3 us compiled. The code here is the reference; the C does the same stores and loads
in the same order (release stores and acquire loads of the sequence words) and is used when it
was built (`COMPILED`); tests/shm/test_latch_c.py holds them to the same bytes and records.
The compiled publisher also does step 0 itself for an observer.book.Book: it copies the best
levels from the book's `top_lists` into the idle copy instead of calling `export_top` (numpy
views, about 3 us of a shard's time per message); a book without them gets `export_top`.
"""

from __future__ import annotations

import os
import platform
import struct
import time
from functools import partial
from typing import NamedTuple

from obproto.layout import (COPY_HEAD_FORMAT, KIND_UPDATE, RECORD_BODY_FORMAT, RECORD_BODY_OFFSET,
                          RING_RECORD)

try:  # the hot paths compiled (client/obproto/_latch_c.c); this module's code is their reference
    from obproto import _latch_c
except ImportError:  # built without a C compiler: the same bytes, more interpreter time
    _latch_c = None

RECORD_WORDS = RING_RECORD.itemsize // 8

# Whether book_publisher and ring_reader use client/obproto/_latch_c (read when they are called, so a
# test can compare both paths). OBSERVER_PURE_PYTHON=1 turns it off for a whole process.
COMPILED = _latch_c is not None and not os.environ.get("OBSERVER_PURE_PYTHON")
if _latch_c is not None:
    assert (_latch_c.RECORD_BYTES, _latch_c.KIND_UPDATE, _latch_c.RECORD_BODY_FORMAT,
            _latch_c.COPY_HEAD_FORMAT) == (RING_RECORD.itemsize, KIND_UPDATE,
                                           RECORD_BODY_FORMAT, COPY_HEAD_FORMAT), \
        "client/obproto/_latch_c.c was built for another layout: rebuild it (pip install -e .)"

LATCH_RETRIES_MAX = 10_000  # a reader gives up (and says why) after this many retries


class LatchContended(Exception):
    """A reader could not get a stable copy in LATCH_RETRIES_MAX tries."""


def require_tso() -> None:
    """Refuse to map a segment on a machine whose memory model this protocol does not fit.

    Called when a segment is mapped (not at import), so tools that only talk to the control
    socket still run anywhere.
    """
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64"):
        raise RuntimeError(f"observer's lock-free segment protocol relies on x86-64 store "
                           f"ordering; this machine is {machine}")


def publish_commit(words, buf, seq_index: int, seq_next: int, copy_head, copy_head_offset: int,
                   copy_head_fields: tuple, record_seq_index: int, record_body,
                   record_fields: tuple, head_index: int, pos: int) -> None:
    """Make a filled copy visible and describe it in ring record `pos`, in the one safe order.

    Before the call the writer has bulk-written the levels of the idle copy `seq_next & 1`
    (which no reader of the current sequence uses). Then, in program order:
      1. the copy head (counts, exponents, ids, flags): still data of the idle copy;
      2. the slot sequence `seq_next`: one 8-byte store, flips readers to the new copy;
      3. the record's seq word 0: a reader mid-copy of the old record at this index sees it;
      4. the record body;
      5. the record's seq word `pos + 1`: complete;
      6. the shard head `pos + 1`: readers polling the head find the record whole.
    TSO makes other cores see these stores in this order. `book_publisher` is the same order,
    specialised for the hot path.
    """
    copy_head.pack_into(buf, copy_head_offset, *copy_head_fields)
    words[seq_index] = seq_next
    words[record_seq_index] = 0
    record_body.pack_into(buf, record_seq_index * 8 + RECORD_BODY_OFFSET, *record_fields)
    words[record_seq_index] = pos + 1
    words[head_index] = pos + 1


class CopyPlace(NamedTuple):
    """Where one of a slot's two copies lies: its head's byte offset, its level views, and
    the word indexes of its bid_px[0] and ask_px[0]."""

    head_offset: int
    views: tuple          # (bid_px, bid_sz, ask_px, ask_sz) int64 views
    bid0_word: int
    ask0_word: int


class RingPlace(NamedTuple):
    """A shard's ring: its first word, the position mask, and the shard head's word."""

    word0: int
    mask: int
    head_index: int


class StatPlaces(NamedTuple):
    """A book's counters: the word of the first, and the timestamps' offsets from it."""

    word0: int
    last_update: int
    last_recv: int
    last_exch: int


def book_publisher(*, words, swords, buf, book_index: int, seq_index: int,
                   copies: tuple[CopyPlace, CopyPlace], depth_max: int, ring: RingPlace,
                   seqs: list, ring_pos: list, stats: StatPlaces):
    """The hot path of one book: `publish(book, flags, recv_ts_ns) -> seq`, stores in the order
    of `publish_commit`, with everything located once (it runs per book change). `words` and
    `swords` are the mapping cast to u64 and i64 (levels are signed).

    Keyword arguments, places named (CopyPlace, RingPlace, StatPlaces). `seqs[book_index]` and
    `ring_pos[0]` are the writer's own copies of the slot sequence and the shard's head (shared
    with its other books and with the cold path), updated here. `book.export_top` fills the
    idle copy's levels (step 0); the record's best levels are read back from them. The book's
    counters (`stats`) are stored after the record is visible, one aligned word
    store each (`pack_into` zero-fills first, so a reader could see a counter pass through 0).
    Why a closure: its locals are cell loads, not attribute lookups, and no argument tuple is
    built; this is about half the cost of the general path, and the latency a busy-polling
    reader sees starts here. When COMPILED, client/obproto/_latch_c's Publisher does the same stores
    in the same order without the interpreter (about 3x less time to the head store).
    """
    if COMPILED:
        return _latch_c.Publisher(
            buf, book_index, seq_index * 8, tuple(c.head_offset for c in copies),
            tuple(c.bid0_word * 8 for c in copies), tuple(c.ask0_word * 8 for c in copies),
            depth_max * 8, tuple(c.views for c in copies), depth_max, ring.word0 * 8, ring.mask,
            ring.head_index * 8, seqs, ring_pos,
            tuple((stats.word0 + k) * 8
                  for k in (0, stats.last_update, stats.last_recv, stats.last_exch))).publish
    (head_0, views_0, bid_0, ask_0), (head_1, views_1, bid_1, ask_1) = copies
    heads, views, bids, asks = (head_0, head_1), (views_0, views_1), (bid_0, bid_1), (ask_0, ask_1)
    ring_word0, ring_mask, head_index = ring
    stats_word0, stat_last_update, stat_last_recv, stat_last_exch = stats
    last_update = stats_word0 + stat_last_update
    last_recv = stats_word0 + stat_last_recv
    last_exch = stats_word0 + stat_last_exch
    pack_head = struct.Struct(COPY_HEAD_FORMAT).pack_into
    pack_body = struct.Struct(RECORD_BODY_FORMAT).pack_into
    clock_ns = time.time_ns

    def publish(book, flags: int, recv_ts_ns: int) -> int:
        publish_ts_ns = clock_ns()
        seq = seqs[book_index] + 1
        copy = seq & 1  # the idle copy: no reader of the current sequence uses it
        n_bids, n_asks = book.export_top(*views[copy])
        if not (0 <= n_bids <= depth_max and 0 <= n_asks <= depth_max):
            raise AssertionError(f"export_top returned ({n_bids}, {n_asks}) levels for a "
                                 f"depth of {depth_max}")
        price_exp, size_exp = book.price_exp, book.size_exp
        update_id, exch_ts_ns = book.update_id, book.exch_ts_ns
        if not (-128 <= price_exp <= 127 and -128 <= size_exp <= 127):  # the record's int8s:
            raise OverflowError(f"exponents ({price_exp}, {size_exp}) outside int8")  # before 2
        pack_head(buf, heads[copy], seq, n_bids, n_asks, price_exp, size_exp, flags, update_id,
                  exch_ts_ns, recv_ts_ns, publish_ts_ns)  # 1
        words[seq_index] = seq  # 2
        pos = ring_pos[0]
        record = ring_word0 + (pos & ring_mask) * RECORD_WORDS
        words[record] = 0  # 3
        bid, ask = bids[copy], asks[copy]
        pack_body(buf, record * 8 + RECORD_BODY_OFFSET, book_index, KIND_UPDATE, flags,
                  price_exp, size_exp, seq, update_id, exch_ts_ns, recv_ts_ns, publish_ts_ns,
                  swords[bid] if n_bids else 0, swords[bid + depth_max] if n_bids else 0,
                  swords[ask] if n_asks else 0, swords[ask + depth_max] if n_asks else 0)  # 4
        pos += 1
        words[record] = pos  # 5
        words[head_index] = pos  # 6
        ring_pos[0] = pos
        seqs[book_index] = seq
        swords[stats_word0] += 1  # updates (word 0 of the stats)
        swords[last_update] = publish_ts_ns
        swords[last_recv] = recv_ts_ns
        swords[last_exch] = exch_ts_ns
        return seq

    return publish


def latch_read(words, seq_index: int, read_copy, arg):
    """Return `(seq, read_copy(seq & 1, arg))` from a copy that no publish touched meanwhile."""
    for _ in range(LATCH_RETRIES_MAX):
        seq = words[seq_index]
        value = read_copy(seq & 1, arg)
        if words[seq_index] == seq:
            return seq, value
    raise LatchContended(f"no stable copy after {LATCH_RETRIES_MAX} tries (LATCH_RETRIES_MAX): "
                         f"the writer publishes faster than this reader can copy")


def ring_head(words, head_index: int) -> int:
    return words[head_index]


def ring_reader(words, buf, ring_word0: int, ring_mask: int, head_index: int, record_body,
                record_type):
    """`read(pos, out, records_max) -> (pos, lapped)`, `take(pos)`,
    `spin(pos, spin_ns) -> bool` and `spin_take(pos, spin_ns)` over one ring.

    Copies records `pos`, `pos + 1`, ... into `out` (as `record_type` tuples), in order, while
    they are complete, at most `records_max`. A record is complete when its seq word is `pos + 1`
    (stored after its body), so the head is not loaded: one cache miss fewer per poll. Each
    record is copied between two loads of its seq word. A seq word below `pos + 1` (the previous lap's, or 0 while being written)
    ends the read; above it, or changed during the copy, means the writer has lapped the
    reader.
    """
    unpack = record_body.unpack_from
    make = partial(tuple.__new__, record_type)  # record_type._make without a Python frame

    def read(pos: int, out: list, records_max: int) -> tuple[int, bool]:
        end = pos + records_max
        while pos < end:
            index = ring_word0 + (pos & ring_mask) * RECORD_WORDS
            seq = words[index]
            if seq != pos + 1:
                return pos, seq > pos + 1
            fields = unpack(buf, index * 8 + RECORD_BODY_OFFSET)
            if words[index] != pos + 1:
                return pos, True
            out.append(make(fields))
            pos += 1
        return pos, False

    def take(pos: int):
        """Record `pos` if it is whole; None if not written yet; LAPPED if overwritten."""
        index = ring_word0 + (pos & ring_mask) * RECORD_WORDS
        seq = words[index]
        if seq != pos + 1:
            return None if seq < pos + 1 else LAPPED
        fields = unpack(buf, index * 8 + RECORD_BODY_OFFSET)
        return make(fields) if words[index] == pos + 1 else LAPPED

    def spin(pos: int, spin_ns: int) -> bool:
        """Loads only, until the shard's head is not `pos` (True) or `spin_ns` pass (False)."""
        deadline_ns = time.monotonic_ns() + spin_ns
        while words[head_index] == pos:
            for _ in range(SPIN_CHECK_CLOCK_EVERY):
                if words[head_index] != pos:
                    return True
            if time.monotonic_ns() >= deadline_ns:
                return False
        return True

    def spin_take(pos: int, spin_ns: int):
        """`spin`, then `take`: record `pos` (or LAPPED) once the head passes it; None after
        `spin_ns` (the head is stored after the record, so a passed head means it is whole)."""
        return take(pos) if spin(pos, spin_ns) else None

    if COMPILED:  # the same, compiled; read() stays here (batches, not latency)
        taker = _latch_c.RingTaker(buf, ring_word0 * 8, ring_mask, head_index * 8, record_type,
                                   LAPPED)
        take, spin, spin_take = taker.take, taker.spin, taker.spin_take
    return read, take, spin, spin_take


SPIN_CHECK_CLOCK_EVERY = 256  # ring_reader's spin: head loads between clock reads


LAPPED = "lapped"  # ring_reader's take(): the record asked for was overwritten


def store_word(words, index: int, value: int) -> None:
    """A counter or timestamp: one aligned 8-byte store, readers see old or new, never torn."""
    words[index] = value
