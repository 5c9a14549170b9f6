"""Sans-IO HTTP/1.1 response parsing: bytes in, one `Response` out, no sockets.

Two users need it. The REST client (`http.py`) reads order book snapshots, which arrive with
Content-Length or chunked, often gzip-compressed, sometimes as a 429/418 whose Retry-After the
feed must see intact. The WebSocket handshake (`wshandshake.py`) reads the head of a 101 reply
and hands whatever follows it to the frame reader. So the head parser is a function of its own
(`parse_head`), and `ResponseParser` adds body framing on top.

Every buffer has a named limit: `head_bytes_max` for the status line and headers,
`headers_max` for their count, `body_bytes_max` for the decoded body (checked while inflating,
so a small gzip bomb cannot allocate gigabytes). Exceeding one, or any malformed framing, is a
`ProtocolError` naming what was wrong; the parser never guesses.

Keep-alive: `ResponseParser.keep_alive` says whether the connection may carry another request,
which is false for HTTP/1.0 without keep-alive, `Connection: close`, a body delimited by EOF,
or bytes left over after the response (a server that sent more than it framed cannot be trusted
with the next request).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

from observer.net.errors import ProtocolError

HEAD_BYTES_MAX = 64 * 1024
HEADERS_MAX = 128
BODY_BYTES_MAX = 64 * 1024 * 1024
CHUNK_LINE_BYTES_MAX = 4096  # a chunk-size line with extensions; real ones are a few bytes
_NO_BODY_STATUSES = frozenset({204, 304})
_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")


@dataclass(slots=True)
class Response:
    """A complete HTTP response. `headers` has lower-case keys; repeated headers are joined."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    reason: str = ""
    version: str = "HTTP/1.1"
    raw_headers: list[tuple[str, str]] = field(default_factory=list)

    @property
    def retry_after_s(self) -> float | None:
        """Retry-After in seconds when given as a number (what exchanges send), else None."""
        value = self.headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value.strip()))
        except ValueError:
            return None


def find_head_end(data: bytes | bytearray, start: int = 0) -> int:
    """Index one past the blank line ending a head, or -1 if it has not all arrived."""
    idx = data.find(b"\r\n\r\n", start)
    return -1 if idx < 0 else idx + 4


def parse_head(head: bytes | bytearray, *, headers_max: int = HEADERS_MAX) -> Response:
    """Parse a status line and headers (ending with the blank line) into a body-less Response."""
    try:
        text = bytes(head).decode("latin-1")
    except Exception as exc:  # latin-1 decodes every byte; this is belt and braces
        raise ProtocolError(f"undecodable HTTP head: {exc}") from None
    lines = text.split("\r\n")
    while lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise ProtocolError("empty HTTP response head")
    version, status, reason = _parse_status_line(lines[0])
    if len(lines) - 1 > headers_max:
        raise ProtocolError(f"more than headers_max={headers_max} response headers")
    headers: dict[str, str] = {}
    raw: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, value = _parse_header_line(line)
        raw.append((name, value))
        key = name.lower()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return Response(status=status, headers=headers, reason=reason, version=version,
                    raw_headers=raw)


def _parse_status_line(line: str) -> tuple[str, int, str]:
    parts = line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise ProtocolError(f"bad HTTP status line: {line[:80]!r}")
    code = parts[1]
    if len(code) != 3 or not (code.isascii() and code.isdigit()):  # not '4²9'
        raise ProtocolError(f"bad HTTP status code: {line[:80]!r}")
    return parts[0], int(code), parts[2] if len(parts) == 3 else ""


def _parse_header_line(line: str) -> tuple[str, str]:
    name, sep, value = line.partition(":")
    # Obsolete line folding and names with spaces are rejected outright (RFC 9112 5.1, 5.2):
    # accepting them is how request smuggling starts.
    if not sep or not name or name != name.strip() or " " in name or "\t" in name:
        raise ProtocolError(f"bad HTTP header line: {line[:80]!r}")
    return name, value.strip(" \t")


class _Inflater:
    """gzip / deflate decoding with the decoded size capped at `body_bytes_max`."""

    def __init__(self, encoding: str, body_bytes_max: int) -> None:
        if encoding == "gzip" or encoding == "x-gzip":
            wbits = 31
        elif encoding == "deflate":
            wbits = 15
        else:
            raise ProtocolError(f"unsupported Content-Encoding {encoding!r}")
        self._zlib = zlib.decompressobj(wbits)
        self._body_bytes_max = body_bytes_max
        self._parts: list[bytes] = []
        self._size = 0
        self._fed_bytes = 0

    def feed(self, data: bytes | memoryview) -> None:
        self._fed_bytes += len(data)
        room = self._body_bytes_max - self._size + 1
        try:
            out = self._zlib.decompress(data, room)
        except zlib.error as exc:
            raise ProtocolError(f"corrupt compressed body: {exc}") from None
        self._size += len(out)
        if self._size > self._body_bytes_max or self._zlib.unconsumed_tail:
            raise ProtocolError(f"decoded body over body_bytes_max={self._body_bytes_max}")
        if out:
            self._parts.append(out)

    def finish(self) -> bytes:
        if self._fed_bytes == 0:
            return b""  # an empty body with a Content-Encoding header (a 304, a HEAD)
        if not self._zlib.eof:
            raise ProtocolError("compressed body ended early")
        return b"".join(self._parts)


class ResponseParser:
    """Feed bytes with `feed(data)`, EOF with `feed_eof()`; `response` is set when complete.

    One parser per response. `leftover` holds bytes received after the response ended.
    """

    def __init__(self, *, head_bytes_max: int = HEAD_BYTES_MAX, headers_max: int = HEADERS_MAX,
                 body_bytes_max: int = BODY_BYTES_MAX, method: str = "GET") -> None:
        assert head_bytes_max > 0
        assert body_bytes_max > 0
        self.head_bytes_max = head_bytes_max
        self.headers_max = headers_max
        self.body_bytes_max = body_bytes_max
        self.method = method
        self.response: Response | None = None
        self.leftover = b""
        self._buf = bytearray()
        self._head: Response | None = None
        self._state = "head"
        self._remaining = 0  # bytes left in a Content-Length body or in the current chunk
        self._body = bytearray()
        self._inflater: _Inflater | None = None
        self._close_delimited = False

    @property
    def keep_alive(self) -> bool:
        """True when the connection may carry another request after this response."""
        head = self._head
        if self.response is None or head is None or self._close_delimited or self.leftover:
            return False
        tokens = _tokens(head.headers.get("connection", ""))
        if head.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens

    def feed(self, data: bytes | bytearray | memoryview) -> Response | None:
        """Consume bytes; return the Response once complete (and on every later call)."""
        if self.response is not None:
            self.leftover += bytes(data)
            return self.response
        self._buf += data
        while self.response is None and self._step():
            pass
        return self.response

    def feed_eof(self) -> Response:
        """The peer closed. Completes a close-delimited body; anything else cut short is an error."""
        if self.response is not None:
            return self.response
        if self._state == "eof_body":
            self._finish()
            assert self.response is not None
            return self.response
        if self._state == "head" and not self._buf:
            raise ProtocolError("connection closed before any response")
        raise ProtocolError(f"connection closed mid-response (while reading {self._state})")

    # One step of the state machine; returns False when it needs more bytes.
    def _step(self) -> bool:
        state = self._state
        if state == "head":
            return self._step_head()
        if state == "length":
            return self._step_length()
        if state == "chunk_size":
            return self._step_chunk_size()
        if state == "chunk_data":
            return self._step_chunk_data()
        if state == "chunk_crlf":
            return self._step_chunk_crlf()
        if state == "trailers":
            return self._step_trailers()
        if state == "eof_body":
            self._take_body(len(self._buf))
            return False
        raise AssertionError(f"unknown parser state {state}")

    def _step_head(self) -> bool:
        end = find_head_end(self._buf)
        if end < 0:
            if len(self._buf) > self.head_bytes_max:
                raise ProtocolError(f"response head over head_bytes_max={self.head_bytes_max}")
            return False
        if end > self.head_bytes_max:
            raise ProtocolError(f"response head over head_bytes_max={self.head_bytes_max}")
        head = parse_head(self._buf[:end], headers_max=self.headers_max)
        del self._buf[:end]
        if 100 <= head.status < 200:
            return True  # 100 Continue and friends: an interim head, the real one follows
        self._head = head
        self._start_body(head)
        return True

    def _start_body(self, head: Response) -> None:
        encoding = head.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            self._inflater = _Inflater(encoding, self.body_bytes_max)
        transfer = _tokens(head.headers.get("transfer-encoding", ""))
        if self.method == "HEAD" or head.status in _NO_BODY_STATUSES:
            self._finish()
        elif transfer:
            if transfer[-1] != "chunked":
                raise ProtocolError(f"unsupported Transfer-Encoding {transfer}")
            self._state = "chunk_size"
        elif "content-length" in head.headers:
            self._remaining = _parse_length(head.headers["content-length"])
            if self._remaining > self.body_bytes_max and self._inflater is None:
                raise ProtocolError(f"Content-Length {self._remaining} over "
                                    f"body_bytes_max={self.body_bytes_max}")
            self._state = "length"
            if self._remaining == 0:
                self._finish()
        else:
            self._close_delimited = True
            self._state = "eof_body"

    def _step_length(self) -> bool:
        n = min(self._remaining, len(self._buf))
        if n == 0:
            return False
        self._take_body(n)
        self._remaining -= n
        if self._remaining == 0:
            self._finish()
        return True

    def _step_chunk_size(self) -> bool:
        idx = self._buf.find(b"\r\n")
        if idx < 0:
            if len(self._buf) > CHUNK_LINE_BYTES_MAX:
                raise ProtocolError(f"chunk size line over {CHUNK_LINE_BYTES_MAX} bytes")
            return False
        line = bytes(self._buf[:idx]).split(b";", 1)[0].strip()
        del self._buf[:idx + 2]
        if not line or len(line) > 16 or not _HEX_DIGITS.issuperset(line):
            raise ProtocolError(f"bad chunk size {line[:40]!r}")
        size = int(line, 16)
        self._remaining = size
        self._state = "chunk_data" if size else "trailers"
        return True

    def _step_chunk_data(self) -> bool:
        n = min(self._remaining, len(self._buf))
        if n == 0:
            return False
        self._take_body(n)
        self._remaining -= n
        if self._remaining == 0:
            self._state = "chunk_crlf"
        return True

    def _step_chunk_crlf(self) -> bool:
        if len(self._buf) < 2:
            return False
        if self._buf[:2] != b"\r\n":
            raise ProtocolError("chunk data not followed by CRLF")
        del self._buf[:2]
        self._state = "chunk_size"
        return True

    def _step_trailers(self) -> bool:
        if self._buf[:2] == b"\r\n":
            del self._buf[:2]
            self._finish()
            return True
        end = find_head_end(self._buf)
        if end < 0:
            if len(self._buf) > self.head_bytes_max:
                raise ProtocolError(f"trailers over head_bytes_max={self.head_bytes_max}")
            return False
        del self._buf[:end]  # trailers carry nothing a snapshot reader needs
        self._finish()
        return True

    def _take_body(self, n: int) -> None:
        if n == 0:
            return
        chunk = bytes(self._buf[:n])
        del self._buf[:n]
        if self._inflater is not None:
            self._inflater.feed(chunk)
            return
        if len(self._body) + n > self.body_bytes_max:
            raise ProtocolError(f"body over body_bytes_max={self.body_bytes_max}")
        self._body += chunk

    def _finish(self) -> None:
        head = self._head
        assert head is not None
        body = self._inflater.finish() if self._inflater is not None else bytes(self._body)
        self.response = Response(status=head.status, headers=head.headers, body=body,
                                 reason=head.reason, version=head.version,
                                 raw_headers=head.raw_headers)
        self.leftover = bytes(self._buf)
        self._buf.clear()
        self._state = "done"


def _tokens(value: str) -> list[str]:
    return [t.strip().lower() for t in value.split(",") if t.strip()]


def _parse_length(value: str) -> int:
    # Repeated identical Content-Length values are allowed (RFC 9110 8.6); differing ones are not.
    values = {v.strip() for v in value.split(",")}
    if len(values) != 1:
        raise ProtocolError(f"conflicting Content-Length {value!r}")
    text = values.pop()
    if not (text.isascii() and text.isdigit()):
        raise ProtocolError(f"bad Content-Length {value!r}")
    return int(text)
