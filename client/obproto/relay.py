"""The relay's wire contract: NATS subjects, the two messages, and the receiver's ordering rule.

Why here. `obrelay` publishes the books of a local observer to NATS; a receiver on another host
(the `nats` feed of a remote observer, or any program in any language) rebuilds them. Both sides
import this module and nothing else for the bytes, as observer and obclient do with
client/obproto/messages.py; docs/RELAY.md says the same in prose, for receivers not written in Python.

Subjects. A book is published on `<prefix>.<observer>.<exchange>.<SYMBOL>` (prefix `ob` by
default) and the relay's heartbeat on `<prefix>.<observer>._hb`. NATS reserves `.` (token
separator), `*` and `>` (wildcards) and whitespace, so each name becomes one token by
`token_escape`: letters, digits and `-` stay, every other byte of the UTF-8 text becomes `_XX`
(two upper-case hex digits). The mapping is one-to-one and reversible (`token_unescape`), and
`_hb` is never the escape of a name (`h` is not a hex digit), so it cannot collide with a book.

Messages. Each is one msgpack array, `[type, field, ...]`, positional like the control
messages, with the same evolution rules (fields only appended, never reordered or reused;
decoders ignore extra trailing fields and unknown types). A `book` message carries a whole
top-N book (exact integers with their exponents, C3), never a delta: a receiver that missed
messages is whole again with the next one it gets. A `hb` message says the relay and its
observer are alive, and which `relay_seq` each book is at.

Ordering. Every `book` message has `(incarnation, relay_seq)`: `relay_seq` counts the messages
of that book from 1, contiguous, within one relay incarnation; `incarnation` is fixed for a
relay process's life and strictly greater than the previous incarnation's (the relay starts at
max(wall clock ns, last heartbeat's incarnation + 1)). So for one book the pair orders every
message ever published, and `BookSequencer` is the whole receiver rule: apply a message iff its
pair is greater than the last applied one. It works whatever the order in which the live
subscription and the last-value fetch (JetStream) deliver, with no gap and no step backwards.
"""

from __future__ import annotations

import string
from typing import NamedTuple

import msgpack

SCHEMA_VERSION = 1               # carried by heartbeats; bumped only on incompatible change
SUBJECT_PREFIX_DEFAULT = "ob"
HEARTBEAT_TOKEN = "_hb"
STREAM_PREFIX = "OB_"            # the last-value stream is STREAM_PREFIX + observer token
MESSAGE_BYTES_MAX = 1024 * 1024  # NATS's default max_payload; a decoder refuses more
LEVELS_MAX = 4096                # levels per side in one book message
NAME_BYTES_MAX = 64              # "exchange:SYMBOL", as in client/obproto/messages.py
HEARTBEATS_MISSED_MAX = 3        # a relay silent this many periods counts as gone
BOOKS_MAX = 65536                # books in one heartbeat's map

TYPE_BOOK = "book"
TYPE_HEARTBEAT = "hb"

# Book message flags. Bit values equal client/obproto/layout's FLAG_STALE and FLAG_LAGGING.
FLAG_STALE = 1     # not known to be right: the observer marked it, the observer is gone, or
                   # the book was never published
FLAG_LAGGING = 2   # the observer's feed runs behind its bound (C11)

BOOK_FIELDS = (
    "type", "incarnation", "relay_seq", "name", "generation", "book_seq", "update_id",
    "exch_ts_ns", "recv_ts_ns", "publish_ts_ns", "relay_ts_ns", "flags", "price_exp",
    "size_exp", "bid_px", "bid_sz", "ask_px", "ask_sz",
)
HEARTBEAT_FIELDS = (
    "type", "schema", "incarnation", "hb_seq", "relay_ts_ns", "period_ms", "observer_up",
    "generation", "observer_heartbeat_ns", "stopping", "books", "stats",
)


class RelayMessageError(ValueError):
    """Bytes that are not a relay message this module can read (the message says why)."""


class BookMessage(NamedTuple):
    """One book at one instant. Prices and sizes are `int * 10**exp`; best level first."""

    type: str
    incarnation: int
    relay_seq: int
    name: str               # "exchange:SYMBOL", the observer's book name
    generation: int         # the source observer's generation (changes when it restarts)
    book_seq: int           # the observer's publish count of this book within `generation`
    update_id: int          # the exchange's update id of this state
    exch_ts_ns: int
    recv_ts_ns: int
    publish_ts_ns: int      # when the source observer published this state (its clock)
    relay_ts_ns: int        # when the relay published this message (its clock)
    flags: int
    price_exp: int
    size_exp: int
    bid_px: list
    bid_sz: list
    ask_px: list
    ask_sz: list

    @property
    def stale(self) -> bool:
        return bool(self.flags & FLAG_STALE)

    @property
    def lagging(self) -> bool:
        return bool(self.flags & FLAG_LAGGING)


class Heartbeat(NamedTuple):
    type: str
    schema: int
    incarnation: int
    hb_seq: int             # contiguous from 1 within an incarnation
    relay_ts_ns: int
    period_ms: int          # the next heartbeat is due this long after this one
    observer_up: bool       # the relay is attached to a live observer (obclient's rule, C9)
    generation: int         # that observer's generation, 0 while none is attached
    observer_heartbeat_ns: int  # the observer's last header heartbeat (its clock), 0 if none
    stopping: bool          # the relay is shutting down cleanly; no heartbeat follows
    books: dict             # name -> the relay_seq of its last book message
    stats: dict             # counters, string keys (see docs/RELAY.md)


assert len(BookMessage._fields) == len(BOOK_FIELDS)
assert len(Heartbeat._fields) == len(HEARTBEAT_FIELDS)


# -- subjects ------------------------------------------------------------------------------------

_TOKEN_SAFE = frozenset(string.ascii_letters + string.digits + "-")
_HEX_UPPER = frozenset("0123456789ABCDEF")


def token_escape(text: str) -> str:
    """One NATS subject token for `text`: [A-Za-z0-9-] kept, any other byte as `_XX`."""
    if not text:
        raise ValueError("an empty name cannot be a subject token")
    if all(ch in _TOKEN_SAFE for ch in text):
        return text
    out = []
    for ch in text:
        if ch in _TOKEN_SAFE:
            out.append(ch)
        else:
            out.extend(f"_{byte:02X}" for byte in ch.encode())
    return "".join(out)


def token_unescape(token: str) -> str:
    """The name `token_escape` made `token` from; ValueError if it made no such token."""
    raw = bytearray()
    i = 0
    while i < len(token):
        ch = token[i]
        if ch in _TOKEN_SAFE:
            raw.append(ord(ch))
            i += 1
        elif ch == "_" and len(token) >= i + 3 and set(token[i + 1:i + 3]) <= _HEX_UPPER:
            raw.append(int(token[i + 1:i + 3], 16))
            i += 3
        else:
            raise ValueError(f"{token!r} is not an escaped name (at offset {i})")
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise ValueError(f"{token!r} does not unescape to UTF-8 text") from None
    if not text or token_escape(text) != token:
        raise ValueError(f"{token!r} is not the escape of any name")
    return text


def check_prefix(prefix: str) -> str:
    """A subject prefix is one plain token (no escaping: the user chooses it)."""
    if not prefix or not all(ch in _TOKEN_SAFE or ch == "_" for ch in prefix):
        raise ValueError(f"subject prefix {prefix!r} must be letters, digits, - and _ only")
    return prefix


def book_subject(prefix: str, observer: str, book_name: str) -> str:
    """`ob.<observer>.<exchange>.<SYMBOL>` for the book named `exchange:SYMBOL`."""
    exchange, sep, symbol = book_name.partition(":")
    if not sep:
        raise ValueError(f"book name {book_name!r} is not exchange:SYMBOL")
    return f"{prefix}.{token_escape(observer)}.{token_escape(exchange)}.{token_escape(symbol)}"


def heartbeat_subject(prefix: str, observer: str) -> str:
    return f"{prefix}.{token_escape(observer)}.{HEARTBEAT_TOKEN}"


def books_wildcard(prefix: str, observer: str) -> str:
    """Every book of one observer (and not its heartbeat)."""
    return f"{prefix}.{token_escape(observer)}.*.*"


def observer_wildcard(prefix: str, observer: str) -> str:
    """Every subject of one observer: its books and its heartbeat (the stream's subjects)."""
    return f"{prefix}.{token_escape(observer)}.>"


def stream_name(observer: str) -> str:
    """The JetStream stream keeping the last message of each of the observer's subjects."""
    return STREAM_PREFIX + token_escape(observer)


def parse_subject(subject: str) -> tuple[str, str | None]:
    """(observer, book name) of a book subject; (observer, None) for a heartbeat subject."""
    tokens = subject.split(".")
    if len(tokens) == 3 and tokens[2] == HEARTBEAT_TOKEN:
        return token_unescape(tokens[1]), None
    if len(tokens) != 4:
        raise ValueError(f"{subject!r} is not a relay subject")
    return token_unescape(tokens[1]), f"{token_unescape(tokens[2])}:{token_unescape(tokens[3])}"


# -- messages ------------------------------------------------------------------------------------

def encode_book(packer: msgpack.Packer, incarnation: int, relay_seq: int, name: str,
                generation: int, snap, relay_ts_ns: int, flags: int) -> bytes:
    """A `book` message from an obclient BookSnapshot (`snap`), packed by a reused packer."""
    return packer.pack([
        TYPE_BOOK, incarnation, relay_seq, name, generation, snap.seq, snap.update_id,
        snap.exch_ts_ns, snap.recv_ts_ns, snap.publish_ts_ns, relay_ts_ns, flags,
        snap.price_exp, snap.size_exp, snap.bid_px.tolist(), snap.bid_sz.tolist(),
        snap.ask_px.tolist(), snap.ask_sz.tolist()])


def encode_heartbeat(packer: msgpack.Packer, hb: Heartbeat) -> bytes:
    assert hb.type == TYPE_HEARTBEAT
    return packer.pack(list(hb))


def decode(payload: bytes) -> BookMessage | Heartbeat:
    """A `book` or `hb` message; RelayMessageError for anything else (say why)."""
    if len(payload) > MESSAGE_BYTES_MAX:
        raise RelayMessageError(f"message of {len(payload)} bytes, over {MESSAGE_BYTES_MAX}")
    try:
        value = msgpack.unpackb(payload, raw=False, strict_map_key=True,
                                max_array_len=LEVELS_MAX, max_map_len=BOOKS_MAX)
    except Exception as exc:   # msgpack raises several types for bad bytes; all mean the same
        raise RelayMessageError(f"not msgpack: {exc}") from None
    if type(value) is not list or not value or type(value[0]) is not str:
        raise RelayMessageError("not a relay message: expected [type, ...]")
    if value[0] == TYPE_BOOK:
        return _decode_book(value)
    if value[0] == TYPE_HEARTBEAT:
        return _decode_heartbeat(value)
    raise RelayMessageError(f"unknown relay message type {value[0]!r}")


def _decode_book(value: list) -> BookMessage:
    n = len(BOOK_FIELDS)
    if len(value) < n:
        raise RelayMessageError(f"book message has {len(value)} fields, needs {n}")
    msg = BookMessage(*value[:n])
    for field in BOOK_FIELDS[1:]:
        got = getattr(msg, field)
        want = str if field == "name" else (list if field in _LEVEL_FIELDS else int)
        if type(got) is not want:
            raise RelayMessageError(f"book message field {field} is {type(got).__name__}, "
                                    f"not {want.__name__}")
    if len(msg.name.encode()) > NAME_BYTES_MAX or ":" not in msg.name:
        raise RelayMessageError(f"book message name {msg.name[:80]!r} is not exchange:SYMBOL")
    if len(msg.bid_px) != len(msg.bid_sz) or len(msg.ask_px) != len(msg.ask_sz):
        raise RelayMessageError("book message has prices and sizes of different lengths")
    if any(type(v) is not int for side in msg[14:] for v in side):
        raise RelayMessageError("book message levels must be integers")
    if msg.relay_seq < 1:
        raise RelayMessageError(f"book message relay_seq {msg.relay_seq} < 1")
    return msg


_LEVEL_FIELDS = frozenset(("bid_px", "bid_sz", "ask_px", "ask_sz"))


def _decode_heartbeat(value: list) -> Heartbeat:
    n = len(HEARTBEAT_FIELDS)
    if len(value) < n:
        raise RelayMessageError(f"heartbeat has {len(value)} fields, needs {n}")
    hb = Heartbeat(*value[:n])
    kinds = {"observer_up": bool, "stopping": bool, "books": dict, "stats": dict}
    for field in HEARTBEAT_FIELDS[1:]:
        want = kinds.get(field, int)
        if type(getattr(hb, field)) is not want:
            raise RelayMessageError(f"heartbeat field {field} is "
                                    f"{type(getattr(hb, field)).__name__}, not {want.__name__}")
    if any(type(k) is not str or type(v) is not int for k, v in hb.books.items()):
        raise RelayMessageError("heartbeat books must map names to relay_seq integers")
    return hb


# -- the receiver's rule -------------------------------------------------------------------------

FIRST = "first"            # the first message seen for this book: apply
NEXT = "next"              # relay_seq is the last one + 1: apply
GAP = "gap"                # same incarnation, messages in between were lost: apply, count
RESTART = "restart"        # a newer relay incarnation: apply, count
OLD = "old"                # a duplicate or older than what was applied: drop
APPLY = frozenset((FIRST, NEXT, GAP, RESTART))


class BookSequencer:
    """Which book messages to apply, per book, from any mix of live and last-value deliveries.

    Sans-IO and bounded by the number of books seen. A receiver offers every `book` message;
    it applies those whose verdict is in APPLY. `behind(hb)` names the books a heartbeat of
    the applied incarnation says are ahead of what was applied (their last message was lost):
    fetch their last value from the stream.
    """

    def __init__(self):
        self._last: dict[str, tuple[int, int]] = {}
        self.gaps = 0
        self.lost = 0           # messages skipped inside gaps
        self.restarts = 0
        self.old = 0

    def offer(self, msg: BookMessage) -> str:
        key = (msg.incarnation, msg.relay_seq)
        last = self._last.get(msg.name)
        if last is not None and key <= last:
            self.old += 1
            return OLD
        self._last[msg.name] = key
        if last is None:
            return FIRST
        if msg.incarnation != last[0]:
            self.restarts += 1
            return RESTART
        if msg.relay_seq == last[1] + 1:
            return NEXT
        self.gaps += 1
        self.lost += msg.relay_seq - last[1] - 1
        return GAP

    def last(self, name: str) -> tuple[int, int] | None:
        """(incarnation, relay_seq) of the last applied message of book `name`."""
        return self._last.get(name)

    def behind(self, hb: Heartbeat) -> list[str]:
        """Books the heartbeat says have a newer message than the last one applied."""
        out = []
        for name, relay_seq in hb.books.items():
            last = self._last.get(name)
            if last is None or last < (hb.incarnation, relay_seq):
                out.append(name)
        return out
