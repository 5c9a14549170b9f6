"""A WebSocket client connection after the handshake, sans-IO: the rules around the frames.

`FrameReader` knows frames; this knows what a client must do with them (RFC 6455 5.5, 7):

- answer every ping with a pong carrying the same payload, before anything else we send
  (queued in `data_to_send()`, which the transport flushes after each event);
- on a close frame from the server, echo its code once, then expect the server to end TCP;
- when we close, send one close frame and ignore data until the server's close arrives;
- on a protocol violation, send a close frame with the violation's code and stop reading.

States: OPEN, CLOSING (we sent a close, waiting for theirs), CLOSED (close frames went both
ways, or the reader failed). Sending data outside OPEN raises `ConnectionClosed`.
"""

from __future__ import annotations

import enum

from observer.net.errors import ConnectionClosed, ProtocolError
from observer.net.wsframe import (
    OP_BINARY,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Close,
    FrameReader,
    Message,
    Ping,
    Pong,
    encode_close,
    encode_frame,
)

OUTGOING_BYTES_MAX = 1024 * 1024  # queued pongs and closes; a server that floods pings hits this


class State(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class ClientConnection:
    """Events out of a FrameReader, with pongs and close replies queued for the transport."""

    def __init__(self, reader: FrameReader) -> None:
        self.reader = reader
        self.state = State.OPEN
        self.close_code: int | None = None   # the code of the close frame we received
        self.close_reason = ""
        self.close_sent_code: int | None = None
        self._outgoing = bytearray()

    def next_event(self) -> Message | Ping | Pong | Close | None:
        """The next event; control frames are answered (queued) before they are returned."""
        if self.state is State.CLOSED:
            return None
        try:
            event = self.reader.next_event()
        except ProtocolError as exc:
            self.fail(exc.close_code, str(exc))
            raise
        if event is None or type(event) is Message:
            return event
        self.on_control(event)
        return event

    def on_control(self, event: Ping | Pong | Close) -> None:
        """Apply the rules for a control event (queue a pong, echo a close)."""
        if type(event) is Ping:
            if self.state is State.OPEN:
                self._queue(encode_frame(OP_PONG, event.payload))
        elif type(event) is Close:
            self._on_close(event)

    def _on_close(self, event: Close) -> None:
        self.close_code = event.code
        self.close_reason = event.reason
        if self.state is State.OPEN:
            # Echo the code (RFC 6455 5.5.1); 1005 means the frame had none, so echo none.
            self._queue(encode_close(event.code))
            self.close_sent_code = event.code
        self.state = State.CLOSED

    def fail(self, code: int, reason: str) -> None:
        """The reader raised: owe the server a close frame with the violation's code."""
        if self.state is State.OPEN:
            self._queue(encode_close(code, reason[:100]))
            self.close_sent_code = code
        self.state = State.CLOSED

    def _queue(self, frame: bytes) -> None:
        if len(self._outgoing) + len(frame) > OUTGOING_BYTES_MAX:
            self.state = State.CLOSED
            raise ProtocolError(f"control replies over OUTGOING_BYTES_MAX={OUTGOING_BYTES_MAX}",
                                1008)
        self._outgoing += frame

    def data_to_send(self) -> bytes:
        """Bytes the connection owes the server (pongs, close replies); empties the queue."""
        if not self._outgoing:
            return b""
        out = bytes(self._outgoing)
        self._outgoing.clear()
        return out

    # -- what the user sends ------------------------------------------------------------------

    def _require_open(self) -> None:
        if self.state is not State.OPEN:
            raise ConnectionClosed(self.close_code or self.close_sent_code or 1006,
                                   self.close_reason)

    def send_text(self, text: str) -> bytes:
        self._require_open()
        return encode_frame(OP_TEXT, text.encode("utf-8"))

    def send_binary(self, data: bytes | bytearray | memoryview) -> bytes:
        self._require_open()
        return encode_frame(OP_BINARY, data)

    def send_ping(self, payload: bytes = b"") -> bytes:
        self._require_open()
        return encode_frame(OP_PING, payload)

    def send_close(self, code: int = 1000, reason: str = "") -> bytes:
        """Start the closing handshake; b"" if a close frame already went out."""
        if self.state is not State.OPEN:
            return b""
        self.state = State.CLOSING
        self.close_sent_code = code
        return encode_close(code, reason)
