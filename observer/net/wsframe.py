"""RFC 6455 framing for a client, sans-IO: bytes in, events out, no sockets.

The receive side is the hot path of every feed: a busy exchange stream is thousands of
300-byte text frames a second, and a Coinbase snapshot is one frame of several megabytes. So
`FrameReader` owns its receive buffer and lets the transport write straight into it
(`recv_window()` then `received(n)`, the shape of `recv_into` and `SSLObject.read(n, buf)`):

- A frame that fits the buffer is parsed in place and its message is a memoryview of the
  buffer: no copy at all. Server frames are never masked (a masked one is a protocol error), so
  there is nothing to unmask on the way in.
- A frame larger than the buffer switches the reader to "direct" mode: `recv_window()` then
  points into the message assembly buffer at the payload's final position, so the transport
  writes (decrypts) the payload once, where it will be read.
- Fragments are appended to the assembly buffer, once each. Only permessage-deflate produces a
  second copy, because zlib has no decompress-into.

The one `Message` object is reused: its `data` is valid until the next call into the reader,
which is also when the buffer may be compacted. The assembly buffer grows by replacement, never
in place, so a caller still holding an old view cannot make a resize fail.

Protocol violations raise `ProtocolError` with the close code RFC 6455 asks for: 1002 for
framing (reserved bits, unknown opcode, masked or fragmented control frame, a control frame over
125 bytes, a stray continuation), 1007 for invalid UTF-8 or corrupt compressed data, 1009 for a
message over `message_bytes_max`. The reader is unusable after raising; the connection closes.

Writing (`encode_frame`, `encode_close`) masks every client frame with a fresh random key.
"""

from __future__ import annotations

import os
import struct
import zlib

from observer.net.errors import ProtocolError

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

MESSAGE_BYTES_MAX = 64 * 1024 * 1024  # a multi-megabyte Coinbase snapshot fits many times over
RECV_BYTES_MAX = 256 * 1024           # frames up to this size are parsed in place
CONTROL_BYTES_MAX = 125               # RFC 6455 5.5
_WINDOW_BYTES_MIN = 16 * 1024 + 64    # one TLS record: below this much free space, compact
_DEFLATE_TAIL = b"\x00\x00\xff\xff"   # RFC 7692 7.2.2: stripped by the sender, put back here
_AGAIN = object()                     # _parse consumed a frame that made no event; parse again
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")


class Message:
    """A data message. `data` is a memoryview valid until the next call into the reader."""

    __slots__ = ("data", "is_text")

    def __init__(self) -> None:
        self.data: memoryview = memoryview(b"")
        self.is_text = False

    def text(self) -> str:
        return str(self.data, "utf-8")


class Ping:
    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


class Pong:
    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload


class Close:
    """A close frame. `code` is 1005 when the frame carried no status code."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int, reason: str) -> None:
        self.code = code
        self.reason = reason


def close_code_valid(code: int) -> bool:
    """Whether a peer may send this close code (RFC 6455 7.4, IANA registry)."""
    if 1000 <= code <= 1014:
        return code not in (1004, 1005, 1006)
    return 3000 <= code <= 4999


class FrameReader:
    """Parses server frames from its own buffer; see the module essay for the buffer rules."""

    def __init__(self, *, message_bytes_max: int = MESSAGE_BYTES_MAX,
                 recv_bytes_max: int = RECV_BYTES_MAX, deflate: bool = False,
                 deflate_reset: bool = False, validate_utf8: bool = True) -> None:
        if recv_bytes_max < 2 * _WINDOW_BYTES_MIN:
            raise ValueError(f"recv_bytes_max={recv_bytes_max} must hold two TLS records "
                             f"({2 * _WINDOW_BYTES_MIN} bytes)")
        if message_bytes_max <= 0:
            raise ValueError(f"message_bytes_max={message_bytes_max} must be positive")
        self.message_bytes_max = message_bytes_max
        self.validate_utf8 = validate_utf8
        self._buf = bytearray(recv_bytes_max)
        self._view = memoryview(self._buf)
        self._start = 0          # first byte not yet parsed
        self._end = 0            # one past the last byte received
        self._backlog = bytearray()  # receive_data() input that did not fit a window yet
        self._backlog_bytes_max = recv_bytes_max + message_bytes_max + 16
        self._message = Message()
        # Message assembly (fragments, direct-mode frames).
        self._asm = bytearray(0)
        self._asm_view = memoryview(self._asm)
        self._asm_len = 0
        self._frag_opcode = 0     # opcode of the message being reassembled, 0 if none
        self._frag_compressed = False
        # Direct mode: a frame larger than the buffer, written straight into _asm.
        self._direct_left = -1    # payload bytes still to arrive; -1 when not in direct mode
        self._direct_fin = False
        self._fast = True         # no fragmented message and no direct frame in progress
        # permessage-deflate (RFC 7692), decompression side only.
        self._deflate = deflate
        self._deflate_reset = deflate_reset
        self._inflater = zlib.decompressobj(-15) if deflate else None

    # -- transport side -------------------------------------------------------------------------

    def recv_window(self) -> memoryview:
        """Where the transport writes next; never empty."""
        if self._direct_left > 0:
            pos = self._asm_len
            return self._asm_view[pos:pos + self._direct_left]
        if self._start == self._end:
            self._start = self._end = 0
        elif len(self._buf) - self._end < _WINDOW_BYTES_MIN:
            self._compact()
        return self._view[self._end:]

    def received(self, nbytes: int) -> None:
        """The transport wrote `nbytes` into the last window."""
        assert nbytes >= 0
        if self._direct_left > 0:
            assert nbytes <= self._direct_left
            self._asm_len += nbytes
            self._direct_left -= nbytes
        else:
            assert self._end + nbytes <= len(self._buf)
            self._end += nbytes

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Copying input, for tests and for bytes that arrived with the handshake reply."""
        if len(self._backlog) + len(data) > self._backlog_bytes_max:
            raise ProtocolError(f"receive_data backlog over {self._backlog_bytes_max} bytes; "
                                "read events before feeding more", 1009)
        self._backlog += data

    @property
    def buffered_bytes(self) -> int:
        return self._end - self._start + len(self._backlog)

    def _compact(self) -> None:
        n = self._end - self._start
        self._view[0:n] = self._view[self._start:self._end]
        self._start = 0
        self._end = n

    def _drain_backlog(self) -> bool:
        """Move backlog bytes into the window; False when there were none."""
        if not self._backlog:
            return False
        window = self.recv_window()
        n = min(len(window), len(self._backlog))
        window[:n] = self._backlog[:n]
        del self._backlog[:n]
        self.received(n)
        return True

    # -- events -----------------------------------------------------------------------------------

    def next_event(self) -> Message | Ping | Pong | Close | None:
        """The next complete event, or None when more bytes are needed."""
        # Discussion: the fast path. Nearly every frame of a feed is a complete, final,
        # uncompressed text or binary frame under 64 KiB sitting in the buffer; it is handled
        # here in one function, without the calls of the general path (which measured 40 % of
        # the receive time). Anything else (control frames, fragments, deflate, 64-bit lengths,
        # partial frames, violations) falls through to `_parse`, which checks everything.
        start = self._start
        received_end = self._end
        if self._fast and received_end - start >= 4:
            buf = self._buf
            b0 = buf[start]
            b1 = buf[start + 1]
            if (b0 == 0x81 or b0 == 0x82) and b1 <= 126:
                if b1 < 126:
                    pstart = start + 2
                    end = pstart + b1
                else:
                    pstart = start + 4
                    end = pstart + ((buf[start + 2] << 8) | buf[start + 3])
                if end <= received_end and end - pstart <= self.message_bytes_max:
                    data = self._view[pstart:end]
                    msg = self._message
                    if b0 == 0x81:
                        if self.validate_utf8:
                            try:
                                str(data, "utf-8")
                            except UnicodeDecodeError as exc:
                                raise ProtocolError("text message is not valid UTF-8: "
                                                    f"{exc.reason}", 1007) from None
                        msg.is_text = True
                    else:
                        msg.is_text = False
                    self._start = end
                    msg.data = data
                    return msg
        while True:
            event = self._parse()
            if event is _AGAIN:
                continue
            if event is not None or not self._drain_backlog():
                return event

    def _parse(self) -> object:
        if self._direct_left >= 0:
            return self._finish_direct() if self._direct_left == 0 else None
        buf = self._buf
        start = self._start
        avail = self._end - start
        if avail < 2:
            return None
        b0 = buf[start]
        b1 = buf[start + 1]
        if b1 & 0x80:
            raise ProtocolError("server frame is masked", 1002)
        length = b1 & 0x7F
        hlen = 2
        if length == 126:
            if avail < 4:
                return None
            length = (buf[start + 2] << 8) | buf[start + 3]
            hlen = 4
        elif length == 127:
            if avail < 10:
                return None
            length = _U64.unpack_from(buf, start + 2)[0]
            hlen = 10
            if length >> 63:
                raise ProtocolError("frame length has its top bit set", 1002)
        opcode = b0 & 0x0F
        if b0 & 0x70:
            self._check_rsv(b0, opcode)
        if opcode >= OP_CLOSE:
            return self._parse_control(b0, opcode, length, hlen)
        if length > self.message_bytes_max:  # fail before the payload arrives, not after
            raise ProtocolError(f"message over message_bytes_max={self.message_bytes_max}", 1009)
        if avail < hlen + length:
            if hlen + length > len(buf) - _WINDOW_BYTES_MIN:
                self._enter_direct(b0, opcode, length, hlen)
            return None
        pstart = start + hlen
        self._start = pstart + length
        if b0 & 0xC0 == 0x80 and opcode != OP_CONT and not self._frag_opcode:
            return self._single(opcode, self._view[pstart:pstart + length])  # in place
        return self._fragment(b0, opcode, self._view[pstart:pstart + length])

    def _check_rsv(self, b0: int, opcode: int) -> None:
        if b0 & 0x30:
            raise ProtocolError("reserved bits RSV2/RSV3 set", 1002)
        if not self._deflate:
            raise ProtocolError("RSV1 set without permessage-deflate", 1002)
        if opcode == OP_CONT or opcode >= OP_CLOSE:
            raise ProtocolError("RSV1 set on a continuation or control frame", 1002)

    def _single(self, opcode: int, data: memoryview) -> Message:
        """An unfragmented, uncompressed data frame, parsed in place."""
        msg = self._message
        if opcode == OP_TEXT:
            if self.validate_utf8:
                _check_utf8(data)
            msg.is_text = True
        elif opcode == OP_BINARY:
            msg.is_text = False
        else:
            raise ProtocolError(f"unknown opcode {opcode:#x}", 1002)
        msg.data = data
        return msg

    def _parse_control(self, b0: int, opcode: int, length: int, hlen: int):
        if opcode > OP_PONG:
            raise ProtocolError(f"unknown opcode {opcode:#x}", 1002)
        if not b0 & 0x80:
            raise ProtocolError("fragmented control frame", 1002)
        if length > CONTROL_BYTES_MAX:
            raise ProtocolError(f"control frame of {length} bytes (limit 125)", 1002)
        if self._end - self._start < hlen + length:
            return None
        pstart = self._start + hlen
        payload = bytes(self._view[pstart:pstart + length])
        self._start = pstart + length
        if opcode == OP_PING:
            return Ping(payload)
        if opcode == OP_PONG:
            return Pong(payload)
        return _parse_close(payload)

    # -- fragments and large frames ----------------------------------------------------------------

    def _begin_frame(self, b0: int, opcode: int, length: int) -> None:
        """Checks a data frame's place in the message and reserves room for its payload."""
        if opcode == OP_CONT:
            if not self._frag_opcode:
                raise ProtocolError("continuation frame without a message in progress", 1002)
        elif opcode in (OP_TEXT, OP_BINARY):
            if self._frag_opcode:
                raise ProtocolError("new data frame inside a fragmented message", 1002)
            self._frag_opcode = opcode
            self._frag_compressed = bool(b0 & 0x40)
            self._asm_len = 0
        else:
            raise ProtocolError(f"unknown opcode {opcode:#x}", 1002)
        need = self._asm_len + length
        if need > self.message_bytes_max:
            raise ProtocolError(f"message over message_bytes_max={self.message_bytes_max}", 1009)
        if need > len(self._asm):
            self._grow_asm(need)
        self._fast = False  # until the message is complete (_end_frame)

    def _grow_asm(self, need: int) -> None:
        size = min(max(need, 2 * len(self._asm), 64 * 1024), self.message_bytes_max)
        new = bytearray(size)
        new[:self._asm_len] = self._asm_view[:self._asm_len]
        self._asm = new
        self._asm_view = memoryview(new)

    def _fragment(self, b0: int, opcode: int, data: memoryview) -> object:
        self._begin_frame(b0, opcode, len(data))
        end = self._asm_len + len(data)
        self._asm_view[self._asm_len:end] = data
        self._asm_len = end
        return self._end_frame(b0 & 0x80)

    def _enter_direct(self, b0: int, opcode: int, length: int, hlen: int) -> None:
        self._begin_frame(b0, opcode, length)
        have = self._end - self._start - hlen
        pstart = self._start + hlen
        end = self._asm_len + have
        self._asm_view[self._asm_len:end] = self._view[pstart:pstart + have]
        self._asm_len = end
        self._start = self._end = 0
        self._direct_left = length - have
        self._direct_fin = bool(b0 & 0x80)

    def _finish_direct(self) -> object:
        self._direct_left = -1
        return self._end_frame(self._direct_fin)

    def _end_frame(self, fin: int | bool) -> object:
        if not fin:
            return _AGAIN
        opcode = self._frag_opcode
        self._frag_opcode = 0
        assert self._direct_left == -1
        self._fast = True
        data = self._asm_view[:self._asm_len]
        msg = self._message
        if self._frag_compressed:
            data = self._inflate(data)
        msg.is_text = opcode == OP_TEXT
        if msg.is_text and self.validate_utf8:
            _check_utf8(data)
        msg.data = data
        return msg

    def _inflate(self, data: memoryview) -> memoryview:
        limit = self.message_bytes_max
        inflater = self._inflater
        assert inflater is not None
        try:
            out = inflater.decompress(data, limit + 1)
            if inflater.unconsumed_tail or len(out) > limit:
                raise ProtocolError(f"inflated message over message_bytes_max={limit}", 1009)
            tail = inflater.decompress(_DEFLATE_TAIL, limit + 1 - len(out))
        except zlib.error as exc:
            raise ProtocolError(f"corrupt permessage-deflate data: {exc}", 1007) from None
        if tail:
            out += tail
            if len(out) > limit:
                raise ProtocolError(f"inflated message over message_bytes_max={limit}", 1009)
        if self._deflate_reset or inflater.eof:
            self._inflater = zlib.decompressobj(-15)
        return memoryview(out)


def _check_utf8(data: memoryview) -> None:
    try:
        str(data, "utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"text message is not valid UTF-8: {exc.reason}", 1007) from None


def _parse_close(payload: bytes) -> Close:
    if not payload:
        return Close(1005, "")
    if len(payload) == 1:
        raise ProtocolError("close frame with a 1-byte payload", 1002)
    code = _U16.unpack_from(payload)[0]
    if not close_code_valid(code):
        raise ProtocolError(f"invalid close code {code}", 1002)
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("close reason is not valid UTF-8", 1007) from None
    return Close(code, reason)


# -- writing -----------------------------------------------------------------------------------

def apply_mask(data: bytes | bytearray | memoryview, key: bytes) -> bytes:
    """XOR `data` with the 4-byte `key` repeated (RFC 6455 5.3); one big-int pass, no loop."""
    assert len(key) == 4
    n = len(data)
    if n == 0:
        return b""
    repeated = (key * ((n + 3) // 4))[:n]
    value = int.from_bytes(data, "little") ^ int.from_bytes(repeated, "little")
    return value.to_bytes(n, "little")


def encode_frame(opcode: int, payload: bytes | bytearray | memoryview = b"", *,
                 fin: bool = True, mask_key: bytes | None = None) -> bytes:
    """One masked client frame. `mask_key` is for tests; by default a fresh random key."""
    n = len(payload)
    if opcode >= OP_CLOSE:
        assert fin, "control frames cannot be fragmented"
        assert n <= CONTROL_BYTES_MAX, "control frame payload over 125 bytes"
    b0 = (0x80 if fin else 0) | opcode
    if n < 126:
        head = bytes((b0, 0x80 | n))
    elif n < 65536:
        head = bytes((b0, 0x80 | 126)) + _U16.pack(n)
    else:
        head = bytes((b0, 0x80 | 127)) + _U64.pack(n)
    key = os.urandom(4) if mask_key is None else mask_key
    return head + key + apply_mask(payload, key)


def encode_close(code: int = 1000, reason: str = "", *, mask_key: bytes | None = None) -> bytes:
    """A close frame; code 1005 means "no status code" and sends an empty payload."""
    if code == 1005:
        return encode_frame(OP_CLOSE, b"", mask_key=mask_key)
    assert close_code_valid(code), f"close code {code} may not be sent"
    payload = _U16.pack(code) + reason.encode("utf-8")[:CONTROL_BYTES_MAX - 2]
    return encode_frame(OP_CLOSE, payload, mask_key=mask_key)
