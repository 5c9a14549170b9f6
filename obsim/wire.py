"""Pre-encoded WebSocket frames and the per-connection send queue.

Why frames are built here and not by `websockets`: one exchange message goes to every
connection subscribed to it, and the ingest benchmark needs well over 24k messages/s. Encoding
the JSON once, framing it once (a server frame is unmasked, so the bytes are the same for every
client) and handing each connection one `transport.write` per tick of a joined batch costs a
fraction of `await ws.send()` per message per client. `websockets` still owns the handshake,
reading, control frames (it answers pings, sends our pings, closes); our writes are whole
frames between its own, all on one event loop thread, so frames never interleave.
Compression is never negotiated (the server is started with `compression=None`), so a raw
frame is always valid on the wire.

A connection's queue is bounded (`send_bytes_max`, default 64 MiB): a client that cannot take
what the exchange sends is cut off and counted as a slow consumer, as real exchanges do,
instead of the simulator's memory growing without bound. A stalled connection (a fault) holds
its frames and releases them, in order, when the stall ends.
"""

from __future__ import annotations

import itertools
import time

OP_CONT = 0x0
OP_TEXT = 0x1
FIN = 0x80

SEND_BYTES_MAX_DEFAULT = 64 * 1024 * 1024
FRAGMENT_BYTES_DEFAULT = 64

_conn_ids = itertools.count(1)


def frame_header(first_byte: int, payload_len: int) -> bytes:
    if payload_len < 126:
        return bytes((first_byte, payload_len))
    if payload_len < 65536:
        return bytes((first_byte, 126)) + payload_len.to_bytes(2, "big")
    return bytes((first_byte, 127)) + payload_len.to_bytes(8, "big")


def text_frame(payload: bytes) -> bytes:
    """One complete, unmasked server text frame."""
    return frame_header(FIN | OP_TEXT, len(payload)) + payload


def fragmented_frames(payload: bytes, fragment_bytes: int) -> bytes:
    """The same text message as a first frame plus continuation frames (RFC 6455 5.4)."""
    assert fragment_bytes >= 1
    chunks = [payload[i:i + fragment_bytes] for i in range(0, len(payload), fragment_bytes)]
    if len(chunks) < 2:
        return text_frame(payload)
    out = [frame_header(OP_TEXT, len(chunks[0])), chunks[0]]
    for chunk in chunks[1:-1]:
        out += [frame_header(OP_CONT, len(chunk)), chunk]
    out += [frame_header(FIN | OP_CONT, len(chunks[-1])), chunks[-1]]
    return b"".join(out)


class Conn:
    """One client WebSocket connection as a venue sees it."""

    def __init__(self, ws, send_bytes_max: int = SEND_BYTES_MAX_DEFAULT) -> None:
        self.ws = ws
        self.id = next(_conn_ids)
        self.path = ws.request.path if ws.request is not None else ""
        self.send_bytes_max = send_bytes_max
        self.pending: list[bytes] = []
        self.pending_bytes = 0
        self.stalled_until_s = 0.0
        self.fragment_left = 0
        self.fragment_bytes = FRAGMENT_BYTES_DEFAULT
        self.pongs_muted_until_s = 0.0
        self.opened_s = time.monotonic()
        self.last_in_s = self.opened_s
        self.last_out_s = self.opened_s
        self.inbound_window_s = 0.0
        self.inbound_count = 0
        self.closed = False
        self.close_reason = ""
        self.state: dict = {}                 # venue-specific: subscriptions, sequence numbers
        self.stamps = None                    # a StampLog (obsim/stamps.py) or None
        self.stamp_keys: list = []            # (symbol, update id) of queued stamped messages

    def send(self, frame: bytes, payload: bytes | None = None, stamp_key=None) -> None:
        """Queue one pre-built frame; `payload` is needed only if it may be fragmented;
        `stamp_key` (symbol bytes, update id) is written to the stamp log when it is sent."""
        if self.closed:
            return
        if stamp_key is not None and self.stamps is not None:
            self.stamp_keys.append(stamp_key)
        if self.fragment_left and payload is not None:
            self.fragment_left -= 1
            frame = fragmented_frames(payload, self.fragment_bytes)
        self.pending.append(frame)
        self.pending_bytes += len(frame)

    def send_payload(self, payload: bytes) -> None:
        self.send(text_frame(payload), payload)

    def flush(self, now_s: float) -> bool:
        """Write the queued frames in one call; False if the client was cut off as too slow."""
        if self.closed or not self.pending:
            return not self.closed
        if now_s < self.stalled_until_s:
            if self.pending_bytes > self.send_bytes_max:
                self.abort("slow consumer (stalled queue over send_bytes_max)")
                return False
            return True
        transport = self.ws.transport
        if transport is None or transport.is_closing():
            self.closed = True
            return False
        if transport.get_write_buffer_size() + self.pending_bytes > self.send_bytes_max:
            self.abort("slow consumer (send_bytes_max)")
            return False
        batch = b"".join(self.pending)
        send_ns = time.time_ns()                 # the send stamp: just before the hand-off
        transport.write(batch)
        if self.stamp_keys:
            self.stamps.write(self.stamp_keys, send_ns)
            self.stamp_keys.clear()
        self.pending.clear()
        self.pending_bytes = 0
        self.last_out_s = now_s
        return True

    def abort(self, reason: str) -> None:
        """Drop the TCP connection without a close frame (what a dying exchange does)."""
        self.close_reason = reason
        self.closed = True
        self.pending.clear()
        self.pending_bytes = 0
        if self.ws.transport is not None:
            self.ws.transport.abort()

    def count_inbound(self, now_s: float) -> int:
        """Messages received in the current one-second window, this one included."""
        if now_s - self.inbound_window_s >= 1.0:
            self.inbound_window_s = now_s
            self.inbound_count = 0
        self.inbound_count += 1
        self.last_in_s = now_s
        return self.inbound_count
