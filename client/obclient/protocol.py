"""The client side of the control protocol, sans-IO: requests out as bytes, bytes in as replies.

Why a separate machine: the blocking transport in client.py, a test's in-memory pair and a
future asyncio transport all share it, and none of them re-implements framing or decoding. It
numbers requests (`req_id`, never 0: 0 marks pushed messages), decodes replies, and keeps pushed
`updates` apart from replies so a caller waiting for one reply never loses the other.

Bounded like the server: one reply frame (`REPLY_BYTES_MAX`) of input, and at most
`pushed_max` pushed messages held between reads (older ones are dropped and counted, the server
also counts what it could not send).
"""

from __future__ import annotations

import collections

from obproto import framing
from obproto import messages as m

PUSHED_MAX = 64


class ProtocolError(Exception):
    """The server sent something this client cannot follow; the connection is unusable."""


class ClientProtocol:
    def __init__(self, client_name: str = "", pushed_max: int = PUSHED_MAX):
        self.client_name = client_name
        self._codec = m.client_codec()
        self._decoder = framing.FrameDecoder(m.REPLY_BYTES_MAX)
        self._req_id_last = 0
        self.replies: dict[int, object] = {}
        self.pushed: collections.deque = collections.deque(maxlen=pushed_max)
        self.pushed_dropped = 0
        self.unsolicited_errors: collections.deque = collections.deque(maxlen=16)
        self.closed = False

    def request(self, cls, *fields) -> tuple[int, bytes]:
        """Frame a request of type `cls`; returns its req_id and the bytes to send."""
        assert cls in m.REQUESTS.values()
        self._req_id_last += 1
        msg = cls(self._req_id_last, *fields)
        payload = self._codec.encode(msg)
        return msg.req_id, framing.encode_frame(payload, m.REQUEST_BYTES_MAX)

    def hello(self, want_fds: bool = True) -> tuple[int, bytes]:
        # The limit is in UTF-8 bytes: cut there, and never inside a character.
        name = self.client_name.encode()[: m.NAME_BYTES_MAX].decode(errors="ignore")
        return self.request(m.Hello, m.PROTOCOL_VERSION_MIN, m.PROTOCOL_VERSION, name, want_fds)

    def receive_data(self, data) -> None:
        """Feed bytes from the server; b"" is end of stream. Raises ProtocolError."""
        if not data:
            self.closed = True
            return
        try:
            self._decoder.receive_data(data)
            while (payload := self._decoder.next_frame()) is not None:
                self._receive_message(self._codec.decode(payload))
        except framing.FrameError as exc:
            raise ProtocolError(f"bad frame from server: {exc}") from None
        except m.MessageError as exc:
            if exc.code != m.ErrorCode.UNKNOWN_TYPE:   # rule 3: ignore unknown reply types
                raise ProtocolError(f"bad message from server: {exc}") from None

    def _receive_message(self, msg) -> None:
        if type(msg) is m.Updates:
            if len(self.pushed) == self.pushed.maxlen:
                self.pushed_dropped += len(self.pushed[0].records)
            self.pushed.append(msg)
        elif msg.req_id == 0:
            self.unsolicited_errors.append(msg)      # e.g. the server closing us, with a reason
        else:
            self.replies[msg.req_id] = msg

    def take_reply(self, req_id: int):
        """The reply to `req_id` if it has arrived, else None."""
        return self.replies.pop(req_id, None)
