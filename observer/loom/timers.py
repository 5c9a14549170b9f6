"""Timers: a heap of deadlines, pure (time is passed in, never read here).

The loop asks two questions each pass: "when is the next deadline?" (to bound its poll) and
"what expired by now?" (to fire callbacks). Both take `now_s` from the caller, so tests drive
this module with a hand-advanced fake clock and no sleeps.

An entry is a 4-slot list `[deadline_s, seq, callback, arg]`: lists compare element-wise and
`seq` is unique, so the heap never compares callbacks. Cancelling is lazy: the entry's callback
becomes None and stays in the heap until it reaches the top or a prune rebuilds the heap. The
prune runs when dead entries outnumber live ones, so the heap is at most about twice the live
count, and it asserts that the live count it finds is the one it kept.
"""

from __future__ import annotations

import heapq

TIMERS_MAX = 1_000_000     # armed timers one loop holds; past it arming is an error
PRUNE_MIN = 64             # below this heap size a prune is not worth it


class TimerQueue:
    __slots__ = ("_heap", "_seq", "live", "armed_total", "timers_max")

    def __init__(self, timers_max: int = TIMERS_MAX):
        assert timers_max > 0
        self._heap: list[list] = []
        self._seq = 0
        self.live = 0              # armed and not cancelled nor fired
        self.armed_total = 0       # for stats
        self.timers_max = timers_max

    def __len__(self) -> int:
        return self.live

    def arm(self, deadline_s: float, callback, arg=None) -> list:
        """Schedule `callback(arg)` at `deadline_s`; returns the handle `cancel` takes."""
        assert callback is not None
        if self.live >= self.timers_max:
            raise OverflowError(f"timers_max={self.timers_max} armed timers reached")
        self._seq += 1
        entry = [deadline_s, self._seq, callback, arg]
        heapq.heappush(self._heap, entry)
        self.live += 1
        self.armed_total += 1
        return entry

    def cancel(self, entry: list) -> bool:
        """Disarm; False if it already fired or was cancelled (harmless)."""
        if entry[2] is None:
            return False
        entry[2] = None
        entry[3] = None
        self.live -= 1
        assert self.live >= 0
        if len(self._heap) > PRUNE_MIN and len(self._heap) > 2 * self.live:
            self._prune()
        return True

    def next_deadline_s(self) -> float | None:
        """The earliest live deadline, or None when nothing is armed."""
        heap = self._heap
        while heap and heap[0][2] is None:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def expire(self, now_s: float, batch_max: int = 4096) -> int:
        """Fire every live timer due at `now_s` (at most `batch_max` per call); returns count.

        Discussion: a callback may arm new timers; one due already fires in this same call only
        if it sorts before the rest, which is fine. The batch bound keeps one pass finite when a
        callback keeps re-arming a timer at `now_s`.
        """
        heap = self._heap
        fired = 0
        while heap and fired < batch_max:
            entry = heap[0]
            if entry[2] is None:
                heapq.heappop(heap)
                continue
            if entry[0] > now_s:
                break
            heapq.heappop(heap)
            callback, arg = entry[2], entry[3]
            entry[2] = None
            entry[3] = None
            self.live -= 1
            fired += 1
            callback(arg)
        return fired

    def _prune(self) -> None:
        kept = [entry for entry in self._heap if entry[2] is not None]
        assert len(kept) == self.live, (len(kept), self.live)
        heapq.heapify(kept)
        self._heap = kept
