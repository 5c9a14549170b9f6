"""The shared-memory segment layout: the one description writers and readers share.

Why this module exists. observer writes books into one POSIX shared-memory segment and any
number of strategy processes read them, some of them not written in Python. So the bytes are
declared once, here, as little-endian numpy structured dtypes with explicit offsets, and every
other module (observer/shm on the writing side, obclient on the reading side, docs/PROTOCOL.md
for other languages) derives from these declarations. Import-time assertions pin sizes and the
offsets readers rely on, so an accidental change fails loudly instead of producing garbage.

The segment, in order (every region starts on a 64-byte boundary):

    header            one HEADER record: magic, version, layout hash, generation, geometry
    book descriptors  books_n BOOK_DESC records: exchange, symbol, native symbol, shard
    book stats        books_n BOOK_STATS records: int64 counters that `obctl stats` reads
    shard headers     shards_n SHARD records: ring head, heartbeat, writer pid
    book slots        books_n slots: a latch sequence word, then two copies of the book
    rings             shards_n rings of ring_records RING_RECORD records each

Versioning. `LAYOUT_VERSION` changes when the meaning of a field changes; `LAYOUT_HASH` is
derived from the dtypes themselves, so any change of a field, type or offset changes it even if
someone forgets the version. Readers refuse a segment whose magic, version or hash they do not
know (see `check_header`), with a message that says which one and what was expected.

Exact prices (C3): a price or size is an int64 `value` meaning `value * 10**exp`; the exponents
of a book travel inside every published copy and every ring record, so a rescale is seen at the
same instant as the values it applies to. How sequence words are written and read (C4, C5) lives
in `client/obproto/latch.py`, the one module whose correctness depends on memory ordering.
"""

from __future__ import annotations

import hashlib
import sys
from collections import namedtuple
from typing import NamedTuple

import numpy as np

assert sys.byteorder == "little", "the segment layout is little-endian; so is x86-64"

MAGIC = 0x314D48535642534F  # b"OBSVSHM1" read as a little-endian u64
LAYOUT_VERSION = 4  # 2: book stats reserved_0 became unread_bytes (C11); 3: shard wake_ahead, header clients_n
# 4: FLAG_INVALID, and the copy head's `note` (the exchange's refusal) in what was reserved
ALIGN_BYTES = 64  # every region and every slot starts on a cache line

# Limits a segment is sized from at start-up; nothing is resized after (C9).
DEPTH_MAX_LIMIT = 4096
BOOKS_MAX = 65536
SHARDS_MAX = 256
RING_RECORDS_MIN = 16
RING_RECORDS_MAX = 1 << 24
NAME_BYTES_MAX = {"exchange": 16, "symbol": 48, "native": 56}

# Header `state` values.
STATE_LIVE = 1
STATE_CLOSED = 2  # the observer shut down cleanly; readers should reattach

# Flags of a published copy and of a ring record.
FLAG_STALE = 1  # the book is not known to be right (gap, disconnect, restart)
FLAG_LAGGING = 2  # the feed runs behind its bound (C11)
FLAG_PUBLISHED = 4  # this slot has been published at least once
FLAG_INVALID = 8  # the exchange refused the symbol: the book stays empty and stale; the
                  # copy head's `note` holds the exchange's reason (written once, before the flag)
NOTE_BYTES_MAX = 48  # the copy head's `note`: UTF-8, NUL padded, cut at a character boundary

# Ring record kinds.
KIND_UPDATE = 1  # the book changed
KIND_STALE = 2  # the book was marked stale
KIND_RESYNC = 3  # synthesised by a reader after an overrun, from the slot (never in the ring)

HEADER = np.dtype(
    [
        ("magic", "<u8"),
        ("layout_version", "<u4"),
        ("header_bytes", "<u4"),
        ("layout_hash", "<u8"),
        ("generation", "<u8"),
        ("created_ns", "<i8"),
        ("heartbeat_ns", "<i8"),  # bumped by the segment owner every heartbeat_period_ns
        ("heartbeat_period_ns", "<i8"),
        ("owner_pid", "<i8"),
        ("state", "<u8"),
        ("books_n", "<u4"),
        ("shards_n", "<u4"),
        ("depth_max", "<u4"),
        ("ring_records", "<u4"),
        ("descs_offset", "<u8"),
        ("stats_offset", "<u8"),
        ("shards_offset", "<u8"),
        ("slots_offset", "<u8"),
        ("slot_bytes", "<u8"),
        ("rings_offset", "<u8"),
        ("ring_bytes", "<u8"),
        ("segment_bytes", "<u8"),
        ("clients_n", "<u8"),  # clients attached on the control socket (supervisor, a hint)
        ("reserved", "<u8", (12,)),
    ],
    align=True,
)
assert HEADER.itemsize == 256
assert HEADER.fields["heartbeat_ns"][1] == 40
assert HEADER.fields["books_n"][1] == 72
assert HEADER.fields["segment_bytes"][1] == 144

BOOK_DESC = np.dtype(
    [
        ("exchange", "S16"),
        ("symbol", "S48"),
        ("native", "S56"),
        ("shard_index", "<u4"),
        ("book_index", "<u4"),
    ]
)
assert BOOK_DESC.itemsize == 128
assert BOOK_DESC.fields["shard_index"][1] == 120

# Counter names in order; every one is an int64 written with a plain aligned 8-byte store by
# the shard that owns the book. Readers may see a counter one update old, never a torn one.
BOOK_STATS_FIELDS = (
    "updates",  # publishes of this book
    "gaps",  # sequence gaps detected by the feed
    "resyncs",  # times the book was rebuilt from a snapshot after being stale
    "checksum_errors",
    "reconnects",
    "snapshots",  # snapshots applied: REST (Binance) or the exchange's WebSocket snapshot
    "stale_marks",  # times the book was marked stale
    "lag_ns",  # last measured local receive time minus exchange event time
    "lag_max_ns",
    "lagging_count",  # times the lag crossed its bound (C11)
    "last_update_ns",  # local wall-clock time of the last publish
    "last_recv_ns",  # local receive time of the last applied message
    "last_exch_ts_ns",
    "messages",  # feed messages applied to this book (a snapshot counts as one)
    "unread_bytes",  # bytes received but not yet parsed: kernel queue + TLS + WebSocket (C11)
    "reserved_1",
)
BOOK_STATS = np.dtype([(name, "<i8") for name in BOOK_STATS_FIELDS])
assert BOOK_STATS.itemsize == 128

SHARD = np.dtype(
    [
        ("head", "<u8"),  # records ever appended; alone on its cache line (readers poll it)
        ("pad_head", "<u8", (7,)),
        ("heartbeat_ns", "<i8"),  # bumped by the shard's writer at its heartbeat period
        ("writer_pid", "<i8"),
        ("flushes", "<u8"),  # eventfd writes after batches (one per wake group in use, C6)
        ("wake_ahead", "<u8"),  # 1 from a wake-ahead write until the flush that follows it
        ("reserved", "<u8", (4,)),
    ]
)
assert SHARD.itemsize == 128
assert SHARD.fields["head"][1] == 0
assert SHARD.fields["heartbeat_ns"][1] == 64

# The fixed part of one published copy of a book; the level arrays follow it.
COPY_HEAD = np.dtype(
    [
        ("book_seq", "<u8"),  # the latch sequence value under which this copy became visible
        ("n_bids", "<i8"),
        ("n_asks", "<i8"),
        ("price_exp", "<i8"),
        ("size_exp", "<i8"),
        ("flags", "<u8"),
        ("update_id", "<u8"),
        ("exch_ts_ns", "<i8"),
        ("recv_ts_ns", "<i8"),
        ("publish_ts_ns", "<i8"),
        ("note", "S48"),  # with FLAG_INVALID: why (the exchange's words); else empty
    ]
)
assert COPY_HEAD.itemsize == 128
assert COPY_HEAD.fields["note"][1] == 80
assert COPY_HEAD.fields["publish_ts_ns"][1] == 72

RING_RECORD = np.dtype(
    [
        ("seq", "<u8"),  # ring position + 1 once complete; 0 while being written
        ("book_index", "<u4"),
        ("kind", "u1"),
        ("flags", "u1"),
        ("price_exp", "i1"),
        ("size_exp", "i1"),
        ("book_seq", "<u8"),  # the slot's latch sequence after this change
        ("update_id", "<u8"),
        ("exch_ts_ns", "<i8"),
        ("recv_ts_ns", "<i8"),
        ("publish_ts_ns", "<i8"),
        ("bid_px", "<i8"),
        ("bid_sz", "<i8"),
        ("ask_px", "<i8"),
        ("ask_sz", "<i8"),
        ("reserved", "<u8"),
    ]
)
assert RING_RECORD.itemsize == 96
assert RING_RECORD.fields["book_index"][1] == 8
assert RING_RECORD.fields["bid_px"][1] == 56

# Named locations: the words a writer packs and a reader unpacks, by field name and in dtype
# order, with their struct formats derived from the dtypes (client/obproto/_latch_c.c checks at import
# that its C structs match these formats).
_STRUCT_CODES = {"<u8": "Q", "<i8": "q", "<u4": "I", "|u1": "B", "|i1": "b"}


def struct_format(dtype: np.dtype, names: tuple) -> str:
    """The little-endian struct format of `names`, consecutive fields of `dtype` in order."""
    offset = dtype.fields[names[0]][1]
    codes = []
    for name in names:
        field, field_offset = dtype.fields[name][:2]
        assert field_offset == offset, f"{name}: not right after the field before it"
        codes.append(_STRUCT_CODES[field.str])
        offset += field.itemsize
    return "<" + "".join(codes)


COPY_HEAD_FIELDS = COPY_HEAD.names[: COPY_HEAD.names.index("publish_ts_ns") + 1]
COPY_HEAD_FORMAT = struct_format(COPY_HEAD, COPY_HEAD_FIELDS)   # "<QqqqqQQqqq"
CopyHead = namedtuple("CopyHead", COPY_HEAD_FIELDS)
# The record after its seq word, up to ask_sz (the seq word is stored on its own, last).
RECORD_BODY_FIELDS = RING_RECORD.names[1 : RING_RECORD.names.index("ask_sz") + 1]
RECORD_BODY_FORMAT = struct_format(RING_RECORD, RECORD_BODY_FIELDS)   # "<IBBbbQQqqqqqqq"
RECORD_BODY_OFFSET = RING_RECORD.fields[RECORD_BODY_FIELDS[0]][1]
RecordBody = namedtuple("RecordBody", RECORD_BODY_FIELDS)


def copy_dtype(depth_max: int) -> np.dtype:
    """One published copy: the fixed head, then four int64 arrays of depth_max levels."""
    return np.dtype(
        [
            ("head", COPY_HEAD),
            ("bid_px", "<i8", (depth_max,)),
            ("bid_sz", "<i8", (depth_max,)),
            ("ask_px", "<i8", (depth_max,)),
            ("ask_sz", "<i8", (depth_max,)),
        ]
    )


def slot_dtype(depth_max: int) -> np.dtype:
    """A book slot: the latch sequence word alone on a cache line, then copies 0 and 1.

    Readers take copy `seq & 1`; see client/obproto/latch.py for why that copy is stable.
    """
    copy = copy_dtype(depth_max)
    fields = [("seq", "<u8"), ("pad_seq", "<u8", (7,)), ("copies", copy, (2,))]
    raw = np.dtype(fields)
    return np.dtype({"names": raw.names, "formats": [raw.fields[n][0] for n in raw.names],
                     "offsets": [raw.fields[n][1] for n in raw.names],
                     "itemsize": align_up(raw.itemsize)})


def align_up(n_bytes: int, align_bytes: int = ALIGN_BYTES) -> int:
    return (n_bytes + align_bytes - 1) // align_bytes * align_bytes


def _layout_hash() -> int:
    # Hash the declarations themselves (names, types, offsets) at two depths, so a change to
    # how depth shapes a slot also changes the hash.
    parts = [HEADER, BOOK_DESC, BOOK_STATS, SHARD, COPY_HEAD, RING_RECORD, slot_dtype(1),
             slot_dtype(3)]
    text = repr([(d.descr, d.itemsize) for d in parts]) + f"v{LAYOUT_VERSION}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")


LAYOUT_HASH = _layout_hash()


class BookDesc(NamedTuple):
    """What a book is: fixed for the life of a segment."""

    exchange: str
    symbol: str  # normalised, e.g. "BTCUSD"
    native: str  # as the exchange spells it, e.g. "XBT/USD"
    shard_index: int


class Geometry(NamedTuple):
    """Where each region lives; computed by the writer, read back from the header by readers."""

    books_n: int
    shards_n: int
    depth_max: int
    ring_records: int
    descs_offset: int
    stats_offset: int
    shards_offset: int
    slots_offset: int
    slot_bytes: int
    rings_offset: int
    ring_bytes: int
    segment_bytes: int


class LayoutError(Exception):
    """A segment this code cannot read: wrong magic, version, hash or geometry."""


def plan_geometry(books_n: int, shards_n: int, depth_max: int, ring_records: int) -> Geometry:
    """Lay the regions out one after the other, each on a cache line."""
    check_limits(books_n, shards_n, depth_max, ring_records)
    descs_offset = align_up(HEADER.itemsize)
    stats_offset = align_up(descs_offset + books_n * BOOK_DESC.itemsize)
    shards_offset = align_up(stats_offset + books_n * BOOK_STATS.itemsize)
    slots_offset = align_up(shards_offset + shards_n * SHARD.itemsize)
    slot_bytes = slot_dtype(depth_max).itemsize
    rings_offset = align_up(slots_offset + books_n * slot_bytes)
    ring_bytes = align_up(ring_records * RING_RECORD.itemsize)
    segment_bytes = rings_offset + shards_n * ring_bytes
    return Geometry(books_n, shards_n, depth_max, ring_records, descs_offset, stats_offset,
                    shards_offset, slots_offset, slot_bytes, rings_offset, ring_bytes,
                    segment_bytes)


def check_limits(books_n: int, shards_n: int, depth_max: int, ring_records: int) -> None:
    if not 1 <= books_n <= BOOKS_MAX:
        raise LayoutError(f"books_n={books_n} outside 1..{BOOKS_MAX} (BOOKS_MAX)")
    if not 1 <= shards_n <= SHARDS_MAX:
        raise LayoutError(f"shards_n={shards_n} outside 1..{SHARDS_MAX} (SHARDS_MAX)")
    if not 1 <= depth_max <= DEPTH_MAX_LIMIT:
        raise LayoutError(f"depth_max={depth_max} outside 1..{DEPTH_MAX_LIMIT} (DEPTH_MAX_LIMIT)")
    if not RING_RECORDS_MIN <= ring_records <= RING_RECORDS_MAX:
        raise LayoutError(f"ring_records={ring_records} outside "
                          f"{RING_RECORDS_MIN}..{RING_RECORDS_MAX}")
    if ring_records & (ring_records - 1):
        raise LayoutError(f"ring_records={ring_records} is not a power of two")


def check_header(buf, size_bytes: int) -> Geometry:
    """Validate a mapped header and return the geometry it declares, or raise LayoutError.

    `buf` is any buffer over the mapping; `size_bytes` the mapping's size. The checks run in the
    order that gives the clearest message: not ours at all, then another version of ours, then
    a layout we do not know, then a geometry that does not fit the mapping.
    """
    if size_bytes < HEADER.itemsize:
        raise LayoutError(f"segment is {size_bytes} bytes, smaller than its {HEADER.itemsize}-byte "
                          f"header: not an observer segment")
    with memoryview(buf) as view:  # a copy: no view of the mapping outlives this call
        raw = bytes(view[:HEADER.itemsize])
    head = np.frombuffer(raw, HEADER, count=1)[0]
    if int(head["magic"]) != MAGIC:
        raise LayoutError(f"bad magic {int(head['magic']):#018x} (expected {MAGIC:#018x}): "
                          f"not an observer segment")
    if int(head["layout_version"]) != LAYOUT_VERSION:
        raise LayoutError(f"segment layout version {int(head['layout_version'])}, this reader "
                          f"knows version {LAYOUT_VERSION}: upgrade the older side")
    if int(head["header_bytes"]) != HEADER.itemsize:
        raise LayoutError(f"segment header_bytes {int(head['header_bytes'])}, expected "
                          f"{HEADER.itemsize} for version {LAYOUT_VERSION}")
    if int(head["layout_hash"]) != LAYOUT_HASH:
        raise LayoutError(f"segment layout hash {int(head['layout_hash']):#018x} differs from "
                          f"this reader's {LAYOUT_HASH:#018x} at the same version "
                          f"{LAYOUT_VERSION}: writer and reader were built from different "
                          f"layouts")
    return _check_geometry(head, size_bytes)


def _check_geometry(head, size_bytes: int) -> Geometry:
    books_n, shards_n = int(head["books_n"]), int(head["shards_n"])
    depth_max, ring_records = int(head["depth_max"]), int(head["ring_records"])
    expected = plan_geometry(books_n, shards_n, depth_max, ring_records)
    declared = Geometry(books_n, shards_n, depth_max, ring_records,
                        *(int(head[f]) for f in Geometry._fields[4:]))
    if declared != expected:
        raise LayoutError(f"segment geometry {declared} disagrees with the layout's {expected}")
    if expected.segment_bytes > size_bytes:
        raise LayoutError(f"segment declares {expected.segment_bytes} bytes but the mapping has "
                          f"only {size_bytes}")
    return expected
