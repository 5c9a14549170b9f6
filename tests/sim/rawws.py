"""A deliberately minimal blocking WebSocket client that shows obsim's raw frames.

The `websockets` client hides what some tests must see (a frame split into continuation frames)
and does what others must not do (it always answers pings). This one does the opening handshake
over TLS, reads frames as they are, and answers nothing unless asked.
"""

from __future__ import annotations

import base64
import os
import socket
import ssl
from urllib.parse import urlsplit


class RawWs:
    def __init__(self, url: str, ca_file: str, timeout_s: float = 10.0) -> None:
        split = urlsplit(url)
        ctx = ssl.create_default_context(cafile=ca_file)
        raw = socket.create_connection((split.hostname, split.port), timeout=timeout_s)
        self.sock = ctx.wrap_socket(raw, server_hostname=split.hostname)
        self.buf = b""
        path = split.path or "/"
        if split.query:
            path += "?" + split.query
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {split.hostname}:{split.port}\r\n"
                           f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = self._read_until(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"handshake refused: {head[:80]!r}")

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed by obsim")
        self.buf += chunk

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self.buf:
            self._fill()
        head, _, self.buf = self.buf.partition(marker)
        return head

    def _read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def read_frame(self) -> tuple[bool, int, bytes]:
        """(fin, opcode, payload) of the next frame, exactly as obsim sent it."""
        b0, b1 = self._read_exact(2)
        length = b1 & 0x7F
        if length == 126:
            length = int.from_bytes(self._read_exact(2), "big")
        elif length == 127:
            length = int.from_bytes(self._read_exact(8), "big")
        assert not b1 & 0x80, "server frames are never masked"
        return bool(b0 & 0x80), b0 & 0x0F, self._read_exact(length)

    def send_text(self, text: str) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        n = len(payload)
        header = bytes((0x81, 0x80 | n)) if n < 126 else bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big")
        self.sock.sendall(header + mask + masked)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
