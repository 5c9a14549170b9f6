"""Event and Queue: fibers waiting on each other, within one loop.

`Event` is folly's Baton grown to many waiters: `post(value)` sets it and wakes every waiter
with the value; `wait()` returns at once once it is set; `clear()` re-arms it. `Queue(maxsize)`
is a bounded FIFO: `put` waits while it is full, `get` waits while it is empty, and an item goes
straight to a waiting getter without touching the buffer. Both are loop-local: post and put
from fibers or from loop callbacks, not from other threads.

Cancel safety: a waiter woken with an item and then cancelled before it runs still gets the item
(the cancel is deferred to its next wait point; see fiber.py), so nothing put is ever lost.
"""

from __future__ import annotations

import collections

from .fiber import current_fiber, suspend, timeout


class QueueFull(Exception):
    pass


class QueueEmpty(Exception):
    pass


class Event:
    __slots__ = ("_set", "value", "_waiters")

    def __init__(self):
        self._set = False
        self.value = None
        self._waiters: list = []

    def is_set(self) -> bool:
        return self._set

    def post(self, value=None) -> None:
        """Set the event and wake every waiter with `value` (a second post updates the value)."""
        self._set = True
        self.value = value
        waiters, self._waiters = self._waiters, []
        for fiber in waiters:
            fiber.loop.reschedule(fiber, value)

    def clear(self) -> None:
        self._set = False
        self.value = None

    def wait(self, timeout_s: float | None = None):
        """Return the posted value, waiting for the post if needed."""
        if self._set:
            return self.value
        fiber = current_fiber()
        self._waiters.append(fiber)
        with timeout(timeout_s):
            return suspend(fiber, self._leave, fiber)

    def _leave(self, fiber) -> None:
        if fiber in self._waiters:
            self._waiters.remove(fiber)


class Queue:
    __slots__ = ("maxsize", "_items", "_getters", "_putters")

    def __init__(self, maxsize: int):
        if maxsize < 1:
            raise ValueError(f"Queue maxsize={maxsize}: a queue needs a bound of at least 1")
        self.maxsize = maxsize
        self._items: collections.deque = collections.deque()
        self._getters: collections.deque = collections.deque()   # waiting fibers
        self._putters: collections.deque = collections.deque()   # [fiber, item] waiting

    def qsize(self) -> int:
        return len(self._items)

    def full(self) -> bool:
        return len(self._items) >= self.maxsize

    def empty(self) -> bool:
        return not self._items

    def put_nowait(self, item) -> None:
        if self._getters:
            getter = self._getters.popleft()
            getter.loop.reschedule(getter, item)
            return
        if len(self._items) >= self.maxsize:
            raise QueueFull(f"queue full (maxsize={self.maxsize})")
        self._items.append(item)

    def put(self, item) -> None:
        try:
            self.put_nowait(item)
            return
        except QueueFull:
            pass
        fiber = current_fiber()
        entry = [fiber, item]
        self._putters.append(entry)
        suspend(fiber, self._leave_putters, entry)

    def get_nowait(self):
        if not self._items:
            raise QueueEmpty("queue empty")
        item = self._items.popleft()
        if self._putters:
            fiber, waiting_item = self._putters.popleft()
            self._items.append(waiting_item)
            fiber.loop.reschedule(fiber, None)
        return item

    def get(self):
        if self._items:
            return self.get_nowait()
        fiber = current_fiber()
        self._getters.append(fiber)
        return suspend(fiber, self._leave_getters, fiber)

    def _leave_getters(self, fiber) -> None:
        if fiber in self._getters:
            self._getters.remove(fiber)

    def _leave_putters(self, entry) -> None:
        if entry in self._putters:
            self._putters.remove(entry)
