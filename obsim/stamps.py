"""Send stamps: when obsim wrote each stream message, in CLOCK_REALTIME nanoseconds, to a file.

Why: a benchmark of feed-to-client latency needs the moment each exchange message left the
exchange, finer than the exchanges' own millisecond event times (Binance `E`, Bybit `ts`). obsim
cannot put it in the message (the adapter parses only the venue's fields), so it writes a side
channel the benchmark joins on what the observer publishes: the book's symbol and update id
(for Bybit, the topic's `u`, which the observer publishes as the book's `update_id`).

Format: fixed 32-byte records, `RECORD` (symbol, NUL-padded ASCII; update id; send ns), one
per stream message, stamped just before the write of the socket buffer that holds it, after
the batch is built and before TLS and the send (so a message queued in the same tick as others
carries the same stamp; the stamp file is written after the send, outside the measured span). Records are appended with one
`os.write` per flush of a connection, so a reader sees whole records at any time.
Only venues that pass a key to `Venue.broadcast` write stamps (Bybit today).
"""

from __future__ import annotations

import os
import struct
import time

RECORD = struct.Struct("<16sqq")
SYMBOL_BYTES = 16


class StampLog:
    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self.records = 0

    def write(self, keys: list[tuple[bytes, int]], send_ns: int | None = None) -> None:
        """One record per (symbol, update id) in `keys`, all stamped `send_ns` (default now)."""
        now_ns = time.time_ns() if send_ns is None else send_ns
        pack = RECORD.pack
        os.write(self.fd, b"".join(pack(symbol, update_id, now_ns) for symbol, update_id in keys))
        self.records += len(keys)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def read_stamps(path: str) -> dict[tuple[str, int], int]:
    """{(symbol, update id): send ns} from a stamp file (the first stamp of a repeated key)."""
    with open(path, "rb") as f:
        data = f.read()
    out: dict[tuple[str, int], int] = {}
    usable = len(data) - len(data) % RECORD.size
    for symbol, update_id, send_ns in RECORD.iter_unpack(data[:usable]):
        out.setdefault((symbol.rstrip(b"\0").decode(), update_id), send_ns)
    return out
