"""Length-prefix framing for the control socket, shared by the server and every client.

Why a length prefix and not msgpack's own streaming: a length tells the receiver how big the
message is *before* it buffers it, so a limit can be enforced up front, an oversized message can
be skipped without decoding it, and a truncated one is simply "not complete yet". Every frame is

    u32 little-endian payload length | payload (one msgpack value, see client/obproto/messages.py)

The decoder is sans-IO: callers push bytes in with `receive_data` and pull complete payloads out
with `next_frame`. It holds at most one frame plus one receive chunk, so a peer can never make it
grow past `frame_bytes_max + recv_bytes_max` bytes. A frame longer than `frame_bytes_max` but no
longer than `skip_bytes_max` is skipped whole and reported (the stream stays in step, so the
sender can get an error reply); anything longer is treated as garbage that cannot be
resynchronised and the stream is declared broken.
"""

from __future__ import annotations

import struct

HEADER = struct.Struct("<I")
HEADER_BYTES = HEADER.size
assert HEADER_BYTES == 4


class FrameError(Exception):
    """The byte stream broke the framing rules; `fatal` says the stream cannot continue."""

    def __init__(self, message: str, *, fatal: bool):
        super().__init__(message)
        self.fatal = fatal


def encode_frame(payload: bytes, frame_bytes_max: int) -> bytes:
    """One frame: the length prefix, then the payload. Refuses a payload over the limit."""
    if len(payload) > frame_bytes_max:
        raise FrameError(
            f"frame of {len(payload)} bytes exceeds frame_bytes_max={frame_bytes_max}", fatal=False
        )
    return HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Bytes in, complete payloads out; bounded by `frame_bytes_max`."""

    def __init__(self, frame_bytes_max: int, skip_bytes_max: int | None = None):
        assert frame_bytes_max > 0
        self.frame_bytes_max = frame_bytes_max
        self.skip_bytes_max = skip_bytes_max if skip_bytes_max is not None else 16 * frame_bytes_max
        assert self.skip_bytes_max >= frame_bytes_max
        self._buf = bytearray()
        self._skip_bytes_left = 0
        self.broken = False

    @property
    def buffered_bytes(self) -> int:
        return len(self._buf)

    def receive_data(self, data) -> None:
        """Append received bytes. Bytes of a frame being skipped are dropped at once."""
        assert not self.broken, "receive_data on a broken stream"
        if self._skip_bytes_left:
            n_skip = min(self._skip_bytes_left, len(data))
            self._skip_bytes_left -= n_skip
            data = memoryview(data)[n_skip:]
        self._buf += data

    def next_frame(self) -> bytes | None:
        """The next complete payload, None if none is complete yet; raises FrameError."""
        if self.broken:
            raise FrameError("stream already broken", fatal=True)
        if self._skip_bytes_left or len(self._buf) < HEADER_BYTES:
            return None
        (payload_bytes,) = HEADER.unpack_from(self._buf, 0)
        if payload_bytes > self.frame_bytes_max:
            return self._refuse(payload_bytes)
        frame_bytes = HEADER_BYTES + payload_bytes
        if len(self._buf) < frame_bytes:
            return None
        payload = bytes(self._buf[HEADER_BYTES:frame_bytes])
        del self._buf[:frame_bytes]
        return payload

    def _refuse(self, payload_bytes: int):
        """An oversized frame: skip it if that is bounded, else the stream is garbage."""
        if payload_bytes > self.skip_bytes_max:
            self.broken = True
            self._buf.clear()
            raise FrameError(
                f"frame length {payload_bytes} exceeds skip_bytes_max={self.skip_bytes_max}: "
                "not a frame stream",
                fatal=True,
            )
        frame_bytes = HEADER_BYTES + payload_bytes
        n_have = min(len(self._buf), frame_bytes)
        del self._buf[:n_have]
        self._skip_bytes_left = frame_bytes - n_have
        raise FrameError(
            f"frame of {payload_bytes} bytes exceeds frame_bytes_max={self.frame_bytes_max}",
            fatal=False,
        )
