"""asyncio: `async for update in client.aupdates(names)`, asleep in the event loop between records.

Why this shape. `client.fileno()` is the client's own epoll: it holds the shards' wake fds
edge-triggered and the control socket. An event loop watches it level-triggered, and an epoll
fd stays readable while its ready list holds an edge; only an `epoll_wait` on it takes the edge
off. A reader callback that only polled the rings therefore ran again at once, forever (547,857
callbacks for 246 records, issue 14). So the callback here first takes the wake-ups
(`client.take_wakeups()`, one `epoll_wait` with timeout 0), and the fd is quiet until the next
shard flush. What it costs: one callback per shard flush, whatever number of records the flush
carries, and one more per batch on exchange feeds with wake-ahead (the shard's early write).

One reader per fd. asyncio keeps one callback per fd, so all the `aupdates` iterators of one
client on one loop share a `_Waker`, whose callback wakes every iterator that waits.

No wake-up is lost. An iterator polls the rings, and only if they had nothing registers its
future and awaits it, with no `await` between the two: a callback, which runs only while the
iterator is suspended, always comes after that poll, and every record published after the poll
is followed by its shard's eventfd write, hence by an edge, hence by a callback.

Liveness and restarts as in `updates()`: the fd goes quiet when the observer goes (its wake fds
go with it), so every iterator also wakes every LIVENESS_CHECK_S (attached: to look at the
heartbeat) or reattach_period_s (detached: to try again), and yields KIND_STALE per book when
the observer goes and KIND_RESYNC per book when a new one is attached. A reattach attempt
connects and says hello in the loop's thread: it fails at once when no observer listens, and
takes at most REATTACH_TIMEOUT_S when one accepts and does not answer (a stopped process).
"""

from __future__ import annotations

import asyncio
import time

from obclient.stream import LIVENESS_CHECK_S


class _Waker:
    """The one reader callback of a client on a loop; wakes every iterator that waits."""

    def __init__(self, client, loop: asyncio.AbstractEventLoop):
        self.client = client
        self.loop = loop
        self.fd = client.fileno()
        self.waiters: list[asyncio.Future] = []
        self.users = 0
        self.wakeups = 0               # callbacks run (a test counts them against records)

    @classmethod
    def join(cls, client, loop) -> "_Waker":
        waker = client._aio_waker
        if waker is None:
            waker = client._aio_waker = cls(client, loop)
            loop.add_reader(waker.fd, waker.on_readable)
        elif waker.loop is not loop:
            raise RuntimeError("this obclient client already serves another event loop; "
                               "connect one client per loop")
        waker.users += 1
        return waker

    def leave(self) -> None:
        self.users -= 1
        assert self.users >= 0
        if self.users == 0:
            self.client._aio_waker = None
            if not self.loop.is_closed():
                self.loop.remove_reader(self.fd)

    def on_readable(self) -> None:
        self.wakeups += 1
        self.client.take_wakeups()         # else the fd stays readable and this runs again
        waiters, self.waiters = self.waiters, []
        for future in waiters:
            if not future.done():
                future.set_result(None)

    async def sleep(self, timeout_s: float) -> None:
        """Until the next wake-up or `timeout_s`."""
        future = self.loop.create_future()
        self.waiters.append(future)
        timer = self.loop.call_later(timeout_s, _wake, future)
        try:
            await future
        finally:
            timer.cancel()
            if future in self.waiters:
                self.waiters.remove(future)


def _wake(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


async def aupdates(client, names=None, idle_timeout_s: float | None = None):
    """Yield `Update` records for the named books (None: all) as they arrive; return after
    `idle_timeout_s` without one (None: never). See the module essay."""
    loop = asyncio.get_running_loop()
    stream = client.stream(names, busy_poll=False)    # resolves the names now (BookNotFound)
    waker = _Waker.join(client, loop)
    try:
        deadline_s = None if idle_timeout_s is None else time.monotonic() + idle_timeout_s
        while True:
            batch = stream.poll()
            if batch:
                for update in batch:
                    yield update
                if idle_timeout_s is not None:
                    deadline_s = time.monotonic() + idle_timeout_s
                continue
            wait_s = LIVENESS_CHECK_S if stream.following else client.reattach_period_s
            if deadline_s is not None:
                left_s = deadline_s - time.monotonic()
                if left_s <= 0:
                    return
                wait_s = min(wait_s, left_s)
            await waker.sleep(wait_s)
    finally:
        waker.leave()
