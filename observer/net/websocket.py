"""The WebSocket client on loom: `connect(url)` for ws:// and wss://, then `recv()` in a loop.

This module is only the transport: bytes from a `TcpStream` or `TlsStream` go into the
`FrameReader`'s own receive window (no intermediate buffer), events come out of
`ClientConnection`, and whatever the connection owes the server (pongs, close replies) is sent
before `recv()` looks at the next event. The protocol rules are all in the sans-IO modules.

`recv()` returns the connection's one reusable `Message`; its `data` memoryview is valid until
the next `recv()`. A feed decodes it (orjson accepts a memoryview) before asking for the next.

Failure is always an exception, never a hang:
- the server's close frame, or EOF, ends in `ConnectionClosed(code, reason)` (1006 for EOF
  without a close frame, as RFC 6455 7.1.5 says);
- a protocol violation sends a close frame with its code and raises `ProtocolError`;
- a read that sees no bytes for `recv_timeout_s` raises `NetTimeout` (exchanges send pings or
  heartbeats well inside a minute, so silence that long means the connection is dead);
- `close(timeout_s=...)` waits at most that long for the server's close frame, then drops TCP.
"""

from __future__ import annotations

from observer import loom
from observer.net import tcp, tls
from observer.net.errors import ConnectionClosed, NetError, NetTimeout, ProtocolError
from observer.net.wsconn import ClientConnection, State
from observer.net.wsframe import (
    MESSAGE_BYTES_MAX,
    RECV_BYTES_MAX,
    Close,
    FrameReader,
    Message,
    Ping,
    Pong,
)
from observer.net.wshandshake import Handshake, parse_url

HANDSHAKE_READ_BYTES = 4096
RECV_TIMEOUT_S = 60.0
CLOSE_TIMEOUT_S = 5.0


def connect(url: str, *, ca_file: str | None = None, timeout_s: float = 10.0,
            message_bytes_max: int = MESSAGE_BYTES_MAX, compression: bool = True,
            headers: dict[str, str] | None = None, recv_timeout_s: float | None = RECV_TIMEOUT_S,
            recv_bytes_max: int = RECV_BYTES_MAX, ssl_context=None) -> "WebSocket":
    """Open a WebSocket (TCP, TLS for wss://, the upgrade), all within `timeout_s`."""
    target = parse_url(url)
    try:
        with loom.timeout(timeout_s):  # one deadline for all the steps, not one per read
            stream, handshake, deflate = _open(target, url, ca_file, timeout_s, compression,
                                               headers, ssl_context)
    except TimeoutError as exc:  # NetTimeout from a step, or the overall deadline
        raise NetTimeout(f"websocket connect to {url} timed out after {timeout_s} s "
                         f"({exc})") from None
    # No inflater reset even for server_no_context_takeover: such a server starts each message
    # afresh and never refers back, so one persistent inflater decodes it correctly (and one
    # that ends a message with BFINAL is replaced at its end-of-stream); a reset per message
    # would cost a new zlib object and its 32 KiB window every time.
    reader = FrameReader(message_bytes_max=message_bytes_max, recv_bytes_max=recv_bytes_max,
                         deflate=deflate is not None)
    reader.receive_data(handshake.leftover)
    stream.read_timeout_s = recv_timeout_s
    return WebSocket(stream, ClientConnection(reader), url)


def _open(target, url, ca_file, timeout_s, compression, headers, ssl_context):
    if target.secure:
        stream = tls.connect(target.host, target.port, ca_file=ca_file, context=ssl_context,
                             timeout_s=timeout_s, read_timeout_s=timeout_s)
    else:
        stream = tcp.connect(target.host, target.port, timeout_s=timeout_s,
                             read_timeout_s=timeout_s)
    try:
        handshake = Handshake(target, compression=compression, headers=headers)
        stream.sendall(handshake.request())
        _read_handshake_reply(stream, handshake, url)
        _, deflate = handshake.check()
    except BaseException:
        stream.close()
        raise
    return stream, handshake, deflate


def _read_handshake_reply(stream, handshake: Handshake, url: str) -> None:
    buf = bytearray(HANDSHAKE_READ_BYTES)
    view = memoryview(buf)
    while True:
        n = stream.recv_into(view)
        if n == 0:
            raise ConnectionClosed(1006, f"{url}: server closed during the opening handshake")
        if handshake.receive_data(view[:n]):
            return


class WebSocket:
    """An open client WebSocket. One fiber calls recv(); any fiber may send."""

    def __init__(self, stream, conn: ClientConnection, url: str) -> None:
        self.stream = stream
        self.conn = conn
        self.url = url
        self.pongs_received = 0
        self.pings_received = 0
        # Why the connection ended, as (code, reason); each raise makes a fresh ConnectionClosed
        # from it. Not the exception itself: a raised exception holds its traceback, whose
        # frames hold this object, so a stored one made every dead connection a reference cycle
        # (this, the TLS state, the 256 KiB frame buffer) that only the cyclic GC frees, and a
        # shard in steady state allocates so few containers that its GC may not run for hours
        # (tests/feeds/test_feed_session_memory.py).
        self._closed: tuple[int, str] | None = None
        self._reading = False          # a fiber is parked in recv() waiting for bytes
        self._ended = loom.Event()     # posted once the connection has ended, for close()

    @property
    def closed(self) -> bool:
        return self.stream.closed

    @property
    def close_code(self) -> int | None:
        return self.conn.close_code

    @property
    def before_read(self):
        """Called before each read from the network (observer/net/tcp.py); None by default."""
        return self.stream.before_read

    @before_read.setter
    def before_read(self, hook) -> None:
        self.stream.before_read = hook

    def unread_bytes(self) -> int:
        """Bytes received from the server that no `recv()` has returned yet: the stream's
        (kernel queue, TLS buffers) plus the frame reader's unparsed bytes. Cheap enough for a
        periodic gauge (one ioctl), not meant per message."""
        if self.stream.closed:
            return 0
        return self.stream.unread_bytes() + self.conn.reader.buffered_bytes

    def recv(self) -> Message:
        """The next data message; answers pings on the way. Raises on close or failure."""
        if self._closed is not None:
            raise self._closed_exc()
        reader = self.conn.reader
        while True:
            try:
                event = reader.next_event()  # the reader directly: one call per message
            except ProtocolError as exc:
                self.conn.fail(exc.close_code, str(exc))
                self._fail(exc)
                raise
            if type(event) is Message:
                return event
            if event is None:
                self._read_more(self.stream, reader)
            else:
                self.conn.on_control(event)
                self._on_control(event)

    def _read_more(self, stream, reader: FrameReader) -> None:
        self._reading = True
        try:
            n = stream.recv_into(reader.recv_window())
        except NetError as exc:
            self._fail(exc)
            raise
        finally:
            self._reading = False
        if n == 0:
            self._fail(ConnectionClosed(1006, "connection closed without a close frame"))
            raise self._closed_exc()
        reader.received(n)

    def _on_control(self, event) -> None:
        if type(event) is Ping:
            self.pings_received += 1
            self._flush()
        elif type(event) is Pong:
            self.pongs_received += 1
        elif type(event) is Close:
            self._flush()
            self._fail(ConnectionClosed(event.code, event.reason))
            raise self._closed_exc()

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.stream.sendall(data)

    def _fail(self, error: NetError) -> None:
        """Remember why the connection ended, send what it owes (a close frame), drop TCP."""
        if self._closed is None:
            self._closed = ((error.code, error.reason) if isinstance(error, ConnectionClosed)
                            else (getattr(error, "close_code", 1006), str(error)))
        try:
            self._flush()
        except NetError:
            pass
        self.stream.close()
        self._ended.post()

    def _closed_exc(self) -> ConnectionClosed:
        code, reason = self._closed
        return ConnectionClosed(code, reason)

    def send_text(self, text: str) -> None:
        self._send(self.conn.send_text(text))

    def send_binary(self, data: bytes | bytearray | memoryview) -> None:
        self._send(self.conn.send_binary(data))

    def ping(self, payload: bytes = b"") -> None:
        self._send(self.conn.send_ping(payload))

    def _send(self, frame: bytes) -> None:
        if self._closed is not None:
            raise self._closed_exc()
        try:
            self.stream.sendall(frame)
        except NetError as exc:
            self._fail(exc)
            raise

    def close(self, code: int = 1000, reason: str = "",
              timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """The closing handshake: send close, wait for the server's, drop TCP. Never hangs.

        From another fiber while one is parked in recv(): that fiber reads the server's close
        and raises ConnectionClosed; this one waits for it, at most `timeout_s`.
        """
        if self.stream.closed:
            return
        if self._reading:
            self._close_beside_reader(code, reason, timeout_s)
            return
        frame = self.conn.send_close(code, reason)
        try:
            with loom.timeout(timeout_s):  # one deadline: a server sending pings cannot stretch it
                if frame:
                    self.stream.sendall(frame)
                self._drain_until_closed()
        except (NetError, TimeoutError):  # a timeout, a reset, a violation: we are leaving
            pass
        finally:
            if self._closed is None:
                self._closed = (code, reason)
            self.stream.close()

    def _drain_until_closed(self) -> None:
        """Read (and drop) what the server sends until its close frame or EOF."""
        conn = self.conn
        while conn.state is not State.CLOSED:
            if conn.next_event() is None:
                n = self.stream.recv_into(conn.reader.recv_window())
                if n == 0:
                    return
                conn.reader.received(n)

    def _close_beside_reader(self, code: int, reason: str, timeout_s: float) -> None:
        try:
            frame = self.conn.send_close(code, reason)
            if frame:
                self.stream.sendall(frame)
            self._ended.wait(timeout_s)
        except (NetError, TimeoutError):
            pass
        finally:
            if self._closed is None:
                self._closed = (code, reason)
            self.stream.close()  # the parked reader, if still there, gets ConnectionClosed
