"""The control-socket messages: one declaration, read by the observer and by every client.

Why positional msgpack arrays: a message is `[type, req_id, field, field, ...]`, so the wire form
is compact, the same in every language with a msgpack library, and the field order below *is* the
schema (docs/PROTOCOL.md repeats it byte by byte). Each frame carries one message (framing:
client/obproto/framing.py). Two tagged unions, one per direction: `REQUESTS` (client to server) and
`REPLIES` (server to client); the server decodes only requests, the client only replies.

Evolution rules (what keeps old and new peers talking):
1. Fields are only ever appended at the end of a message, each with a default. A decoder fills
   missing trailing fields with their defaults and ignores extra trailing fields it does not know.
2. A field is never removed, reordered or given a new meaning; a retired field keeps its slot and
   is sent as its default. Type names are never reused.
3. An unknown request type gets an `error` reply (UNKNOWN_TYPE) and the connection stays open; a
   client ignores reply types it does not know.
4. An incompatible change bumps PROTOCOL_VERSION; `hello` carries the client's supported range and
   the server answers with the highest version both speak, or VERSION_MISMATCH.
5. Limits (message bytes, names per subscribe, string lengths) are part of the protocol; raising
   one is compatible for the side that receives, so receivers raise first.

Version 2 (what changed from 1, and what a client must do):
- `welcome` gained a trailing `idle_s`: a connection that has no subscription and sends no
  message for that long gets an `error` IDLE (req_id 0) and is closed. A version-2 client
  keeps an idle connection open by sending `ping` (no reply) once `PING_AFTER_IDLE_FRACTION`
  of `idle_s` has passed since its last message; a version-1 client, which cannot ping, must
  subscribe or send any request. A server that sends `idle_s` 0 (or omits it) has no limit.
- A connection the server decides to close always gets an `error` saying why first (IDLE,
  SHUTTING_DOWN, BUSY, DENIED, a protocol error...), with req_id 0 unless it answers a request.
- The server never closes a client for not reading its replies: it stops reading that
  client's requests until the replies drain (back pressure), so pipelining is allowed.

Records nested in replies (a book description, an update) are positional arrays under the same
rules. Stats bodies are maps (string keys) because counters are added often and read by humans.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from dataclasses import dataclass
from typing import ClassVar

import msgpack

from obproto import framing, symbols

PROTOCOL_VERSION = 2
PROTOCOL_VERSION_MIN = 1

# Limits. Requests are small; replies carry book lists, snapshots and update batches.
REQUEST_BYTES_MAX = 16 * 1024
REPLY_BYTES_MAX = 1024 * 1024
NAME_BYTES_MAX = 64          # "exchange:SYMBOL", client names
NAMES_MAX = 1024             # book names in one subscribe
TEXT_BYTES_MAX = 512         # error messages
UPDATES_BATCH_MAX = 256      # update records in one `updates` message
SNAPSHOT_DEPTH_MAX = 4096    # levels per side in a socket snapshot
IDLE_S_MIN = 1.0             # a server never announces a shorter idle_s (clients ping in time)
PING_AFTER_IDLE_FRACTION = 0.5   # a client pings once this fraction of idle_s passed silent


class ErrorCode:
    """Error codes carried by `error` replies. Values are part of the protocol."""

    BAD_FRAME = 1         # frame longer than the limit
    BAD_MSGPACK = 2       # payload is not one msgpack value
    BAD_MESSAGE = 3       # known type, wrong fields
    UNKNOWN_TYPE = 4      # type name not known to this server
    VERSION_MISMATCH = 5  # no protocol version in common
    NOT_READY = 6         # a request before `hello`
    UNKNOWN_BOOK = 7
    AMBIGUOUS_BOOK = 8
    LIMIT = 9             # a per-client limit (subscriptions, queue) would be exceeded
    DENIED = 10           # peer credentials not in the allow-list
    BUSY = 11             # a connection limit is reached (the message names it and its value)
    INTERNAL = 12
    IDLE = 13             # version 2: no subscription and no message for idle_s; closed
    SHUTTING_DOWN = 14    # version 2: the observer is stopping; closed (reattach later)

    NAMES = {
        1: "BAD_FRAME", 2: "BAD_MSGPACK", 3: "BAD_MESSAGE", 4: "UNKNOWN_TYPE",
        5: "VERSION_MISMATCH", 6: "NOT_READY", 7: "UNKNOWN_BOOK", 8: "AMBIGUOUS_BOOK",
        9: "LIMIT", 10: "DENIED", 11: "BUSY", 12: "INTERNAL", 13: "IDLE", 14: "SHUTTING_DOWN",
    }
    # Codes a server sends when it refuses a connection at hello (obclient: ServerRefused).
    REFUSALS = frozenset((5, 10, 11))


class MessageError(Exception):
    """A payload that is not a valid message; `code` is the ErrorCode to reply with."""

    def __init__(self, code: int, message: str, req_id: int = 0):
        super().__init__(message)
        self.code = code
        self.req_id = req_id


# --- requests (client -> server) -------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Hello:
    TYPE: ClassVar[str] = "hello"
    req_id: int
    version_min: int
    version_max: int
    client_name: str = ""
    want_fds: bool = True


@dataclass(frozen=True, slots=True)
class ListBooks:
    TYPE: ClassVar[str] = "list"
    req_id: int


@dataclass(frozen=True, slots=True)
class Describe:
    TYPE: ClassVar[str] = "describe"
    req_id: int
    name: str


@dataclass(frozen=True, slots=True)
class Subscribe:
    """Push update records for these books over the socket (empty list: every book)."""

    TYPE: ClassVar[str] = "subscribe"
    req_id: int
    names: list[str]


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    TYPE: ClassVar[str] = "unsubscribe"
    req_id: int
    names: list[str]


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    """A consistent copy of one book over the socket (depth 0: all published levels)."""

    TYPE: ClassVar[str] = "snapshot"
    req_id: int
    name: str
    depth: int = 0


@dataclass(frozen=True, slots=True)
class StatsRequest:
    TYPE: ClassVar[str] = "stats"
    req_id: int


@dataclass(frozen=True, slots=True)
class Ping:
    """Version 2: "still here". No reply; it only restarts the server's idle clock. Any
    req_id is accepted (obclient sends 0, so its ping is one constant frame: `PING_FRAME`)."""

    TYPE: ClassVar[str] = "ping"
    req_id: int


# --- replies (server -> client) --------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Welcome:
    """Reply to hello. When `fds_passed`, the frame carrying it also carries, by SCM_RIGHTS,
    the segment fd (read-only) followed by one wake fd per shard (`n_eventfds`, a name kept
    from when these were the shard eventfds: they are now pollable fds that must never be
    read, see PROTOCOL.md, Wake-ups)."""

    TYPE: ClassVar[str] = "welcome"
    req_id: int
    version: int
    server_name: str
    pid: int
    generation: int
    segment_bytes: int
    layout_version: int
    layout_hash: int
    n_eventfds: int
    fds_passed: bool
    heartbeat_period_s: float
    idle_s: float = 0.0          # version 2; 0: the server closes no idle connection


@dataclass(frozen=True, slots=True)
class BookList:
    """Every book: a list of BookInfo records (see BOOK_INFO_FIELDS)."""

    TYPE: ClassVar[str] = "books"
    req_id: int
    books: list


@dataclass(frozen=True, slots=True)
class BookDesc:
    TYPE: ClassVar[str] = "book"
    req_id: int
    book: list


@dataclass(frozen=True, slots=True)
class Subscribed:
    """The client's subscription after a subscribe/unsubscribe: book indexes."""

    TYPE: ClassVar[str] = "subscribed"
    req_id: int
    books: list
    queue_records_max: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Levels are [price_int, size_int] pairs, best first; value = int * 10**exp."""

    TYPE: ClassVar[str] = "snapshot"
    req_id: int
    book: int
    name: str
    seq: int
    update_id: int
    exch_ts_ns: int
    recv_ts_ns: int
    publish_ts_ns: int
    stale: bool
    lagging: bool
    price_exp: int
    size_exp: int
    bids: list
    asks: list


@dataclass(frozen=True, slots=True)
class Stats:
    TYPE: ClassVar[str] = "stats"
    req_id: int
    observer: dict
    books: list
    clients: list


@dataclass(frozen=True, slots=True)
class Error:
    TYPE: ClassVar[str] = "error"
    req_id: int
    code: int
    message: str


@dataclass(frozen=True, slots=True)
class Updates:
    """Pushed (req_id 0): update records (see UPDATE_FIELDS) and the client's total drops."""

    TYPE: ClassVar[str] = "updates"
    req_id: int
    dropped_total: int
    records: list


# Nested record layouts (positional, same evolution rules).
BOOK_INFO_FIELDS = (
    "index", "exchange", "symbol", "native_symbol", "shard", "price_exp", "size_exp", "depth_max",
)
_BOOK_EXCHANGE, _BOOK_SYMBOL, _BOOK_NATIVE = (BOOK_INFO_FIELDS.index(f)
                                              for f in ("exchange", "symbol", "native_symbol"))
# An update is a ring record (client/obproto/layout.py RING_RECORD) without its sequence word.
UPDATE_FIELDS = (
    "book_index", "kind", "flags", "price_exp", "size_exp", "book_seq", "update_id",
    "exch_ts_ns", "recv_ts_ns", "publish_ts_ns", "bid_px", "bid_sz", "ask_px", "ask_sz",
)

REQUESTS = {m.TYPE: m for m in (
    Hello, ListBooks, Describe, Subscribe, Unsubscribe, SnapshotRequest, StatsRequest, Ping)}
REPLIES = {m.TYPE: m for m in (
    Welcome, BookList, BookDesc, Subscribed, Snapshot, Stats, Error, Updates)}
assert len(REQUESTS) == 8
assert len(REPLIES) == 8


def _field_specs(cls) -> tuple:
    """(name, check, default) per field, in wire order; computed once per type at import."""
    specs = []
    for field in dataclasses.fields(cls):
        default = field.default if field.default is not dataclasses.MISSING else _REQUIRED
        specs.append((field.name, _CHECKS[field.type], default))
    return tuple(specs)


_REQUIRED = object()


def _is_int(v) -> bool:
    return type(v) is int


def _is_str(v) -> bool:
    return type(v) is str and len(v.encode()) <= NAME_BYTES_MAX


def _is_text(v) -> bool:
    return type(v) is str


def _is_names(v) -> bool:
    return type(v) is list and len(v) <= NAMES_MAX and all(_is_str(n) for n in v)


_CHECKS = {
    "int": _is_int,
    "str": _is_str,
    "bool": lambda v: type(v) is bool,
    "float": lambda v: type(v) in (float, int),
    "list": lambda v: type(v) is list,
    "list[str]": _is_names,
    "dict": lambda v: type(v) is dict,
}
_SPECS = {cls: _field_specs(cls) for cls in (*REQUESTS.values(), *REPLIES.values())}
# Error and Welcome carry free text longer than a name.
_SPECS[Error] = tuple((n, _is_text if n == "message" else c, d) for n, c, d in _SPECS[Error])
_SPECS[Welcome] = tuple(
    (n, _is_text if n == "server_name" else c, d) for n, c, d in _SPECS[Welcome])


class Codec:
    """One per connection and direction: a reused packer and the union it decodes."""

    def __init__(self, decodes: dict, payload_bytes_max: int):
        self._decodes = decodes
        self._payload_bytes_max = payload_bytes_max
        self._packer = msgpack.Packer(use_bin_type=True)

    def encode(self, msg) -> bytes:
        specs = _SPECS[type(msg)]
        return self._packer.pack([msg.TYPE, *(getattr(msg, name) for name, _, _ in specs)])

    def decode(self, payload: bytes):
        """A message object, or MessageError carrying the code to reply with."""
        value = self._unpack(payload)
        if type(value) is not list or not value or type(value[0]) is not str:
            raise MessageError(ErrorCode.BAD_MESSAGE, "a message is an array [type, req_id, ...]")
        cls = self._decodes.get(value[0])
        req_id = value[1] if len(value) > 1 and type(value[1]) is int else 0
        if cls is None:
            raise MessageError(ErrorCode.UNKNOWN_TYPE, f"unknown message type {value[0][:32]!r}",
                               req_id)
        return cls(*_fields(cls, value, req_id))

    def _unpack(self, payload: bytes):
        n = self._payload_bytes_max
        try:
            return msgpack.unpackb(
                payload, raw=False, strict_map_key=True, use_list=True,
                max_str_len=n, max_bin_len=n, max_array_len=n, max_map_len=n, max_ext_len=0,
            )
        except Exception as exc:  # msgpack raises several types for bad input; all mean this
            raise MessageError(ErrorCode.BAD_MSGPACK, f"not one msgpack value: {exc}") from None


def _fields(cls, value: list, req_id: int) -> list:
    """Positional fields of `cls` from `value[1:]`, defaults for missing trailing ones."""
    specs = _SPECS[cls]
    args = []
    for i, (name, check, default) in enumerate(specs):
        if i + 1 < len(value):
            v = value[i + 1]
            if not check(v):
                raise MessageError(ErrorCode.BAD_MESSAGE,
                                   f"{cls.TYPE}: field {name!r} has a bad value", req_id)
            args.append(v)
        elif default is _REQUIRED:
            raise MessageError(ErrorCode.BAD_MESSAGE, f"{cls.TYPE}: field {name!r} is missing",
                               req_id)
        else:
            args.append(default)
    return args


def server_codec() -> Codec:
    """The server's codec: decodes requests, encodes replies."""
    return Codec(REQUESTS, REQUEST_BYTES_MAX)


def client_codec() -> Codec:
    """The client's codec: decodes replies, encodes requests."""
    return Codec(REPLIES, REPLY_BYTES_MAX)


# A ping is always the same 11 bytes, so a client can send it without encoding (or allocating).
PING_FRAME = framing.encode_frame(msgpack.packb([Ping.TYPE, 0]), REQUEST_BYTES_MAX)
assert len(PING_FRAME) == 11


# --- where the socket is ---------------------------------------------------------------------

SOCKET_ENV = "OBSERVER_SOCKET"
SOCKET_FILE = "observer.sock"


def default_socket_path() -> str:
    """The control socket both sides use when not told: $OBSERVER_SOCKET, else observer.sock in
    $XDG_RUNTIME_DIR, else in the temp dir."""
    path = os.environ.get(SOCKET_ENV)
    if path:
        return path
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir and os.path.isdir(runtime_dir):
        return os.path.join(runtime_dir, SOCKET_FILE)
    return os.path.join(tempfile.gettempdir(), SOCKET_FILE)


# --- book names ------------------------------------------------------------------------------

class BookNameError(LookupError):
    """A name that matches no book (code UNKNOWN_BOOK) or several (AMBIGUOUS_BOOK, `choices`
    lists their `exchange:SYMBOL` names)."""

    def __init__(self, code: int, message: str, choices: tuple = ()):
        super().__init__(message)
        self.code = code
        self.choices = tuple(choices)


def book_name(exchange: str, symbol: str) -> str:
    return f"{exchange}:{symbol}"


def resolve_book(name: str, books: list) -> list:
    """The BookInfo record (or any record whose first fields are index, exchange, symbol and,
    optionally, native_symbol) that `name` names.

    A name is `exchange:SYMBOL` or a bare `SYMBOL` (accepted when exactly one book matches).
    SYMBOL matches a book when, ignoring case, it is the book's normalised symbol (`BTCUSD`),
    the exchange's native spelling (`BTC/USD` on Kraken, `BTC-USD` on Coinbase), or a spelling
    that normalises to the symbol (`XBT/USD`). No match and several matches raise
    BookNameError, the latter naming every choice.
    """
    if not isinstance(name, str) or not name.strip():
        raise BookNameError(ErrorCode.UNKNOWN_BOOK,
                            f"a book name is SYMBOL or exchange:SYMBOL, got {name!r}")
    exchange, _, symbol = name.strip().upper().rpartition(":")
    spellings = {symbol}
    try:
        spellings.add(symbols.normalise(symbol))
    except symbols.SymbolError:
        pass                                   # not a symbol shape: only an exact match can hit
    x, s, n = _BOOK_EXCHANGE, _BOOK_SYMBOL, _BOOK_NATIVE
    hits = [b for b in books
            if (not exchange or b[x].upper() == exchange)
            and (b[s].upper() in spellings or (len(b) > n and b[n].upper() == symbol))]
    if not hits:
        venues = sorted({b[x] for b in books})
        if exchange and exchange.lower() not in venues:
            raise BookNameError(ErrorCode.UNKNOWN_BOOK, f"unknown book {name!r}: no exchange "
                                f"{exchange.lower()!r} here (books are on {', '.join(venues)})")
        raise BookNameError(ErrorCode.UNKNOWN_BOOK, f"unknown book {name!r}")
    if len(hits) > 1:
        choices = sorted(book_name(b[x], b[s]) for b in hits)
        raise BookNameError(ErrorCode.AMBIGUOUS_BOOK,
                            f"{name} is ambiguous: {', '.join(choices)}", choices)
    return hits[0]
