"""A precomputed cycle of events sent as precomputed frames: ids and event time patched per batch.

Why: the ingest benchmark must offer more than one core of the observer can take (well past
100k messages/s), from one Python process on the other core. Rendering, framing and queueing
each message in Python costs several µs, which made obsim the limit (about 72k/s). Here one
stream variant (a market's events as one connection kind receives them) is rendered once for
the whole cycle (obsim/source.py CycleSource), as complete WebSocket text frames back to back
in one buffer. The fields that change between laps of the cycle (the event time `E`, the ids
`U` and `u`) have fixed widths, so every frame keeps its length and header; a batch of events
is those fields written in place (numpy, a few array operations per batch, nothing per
message) and the batch's bytes copied out whole, for one write per tick.

Fixed widths: ids start at `ID_FIRST` and stay `ID_DIGITS` digits (the venue falls back to
rendering message by message before they would outgrow them); `E` is 13 digits in ms, 16 in µs
(true for clocks between 2001 and 2286). A JSON number never has leading zeros, so widths come
from the values' range, never from padding.
"""

from __future__ import annotations

import numpy as np

from obsim.wire import text_frame

ID_DIGITS = 10
ID_FIRST = 10 ** (ID_DIGITS - 1)
ID_END = 10 ** ID_DIGITS                 # the first id that does not fit
TS_DIGITS = {False: 13, True: 16}        # E in ms, or in µs (timeUnit=MICROSECOND)
_ASCII_ZERO = 48


def span_ids(widths: np.ndarray, start: int, stop: int, prev_u: int) -> tuple[np.ndarray, np.ndarray]:
    """(U, u) of events start..stop of a cycle after `prev_u`: each event's ids cover its width
    (its count of changes, at least 1), contiguous from prev_u + 1 (Binance spot's rule)."""
    last = prev_u + np.cumsum(widths[start:stop], dtype=np.int64)
    return last - widths[start:stop] + 1, last


class FrameCycle:
    """One stream variant of a cycle: `render(index, first, last, event_ts) -> payload` gives
    the payload of event `index` with those values (the venue's own renderer, so a frame is
    byte for byte what the message-by-message path sends)."""

    def __init__(self, events_n: int, render, micros: bool) -> None:
        ts_digits = TS_DIGITS[micros]
        ts_probe, id_probe = 10 ** (ts_digits - 1), ID_FIRST
        chunks, offsets = [], np.zeros((events_n + 1,), np.int64)
        fields = np.zeros((3, events_n), np.int64)      # byte offsets of E, U, u per event
        position = 0
        for index in range(events_n):
            payload = render(index, id_probe, id_probe, ts_probe)
            frame = text_frame(payload)
            head = len(frame) - len(payload)
            for row, (key, value) in enumerate(((b'"E":', ts_probe), (b'"U":', id_probe),
                                                (b'"u":', id_probe))):
                at = payload.index(key + b"%d" % value) + len(key)
                fields[row, index] = position + head + at
            chunks.append(frame)
            position += len(frame)
            offsets[index + 1] = position
        self.buf = np.frombuffer(bytearray(b"".join(chunks)), np.uint8)
        self.offsets = offsets
        self.fields = fields
        self.ts_digits = ts_digits
        self._id_cols = np.arange(ID_DIGITS)
        self._id_pows = 10 ** np.arange(ID_DIGITS - 1, -1, -1, dtype=np.int64)
        self._ts_cols = np.arange(ts_digits)

    def take(self, start: int, stop: int, first: np.ndarray, last: np.ndarray, event_ts: int) -> bytes:
        """Frames of events start..stop with these ids and this event time, as one bytes."""
        buf = self.buf
        ts_text = np.frombuffer(b"%d" % event_ts, np.uint8)
        assert len(ts_text) == self.ts_digits, "event time out of its fixed width"
        buf[self.fields[0, start:stop, None] + self._ts_cols] = ts_text
        for row, ids in ((1, first), (2, last)):
            digits = ids[:, None] // self._id_pows % 10 + _ASCII_ZERO
            buf[self.fields[row, start:stop, None] + self._id_cols] = digits
        return buf[self.offsets[start]:self.offsets[stop]].tobytes()
