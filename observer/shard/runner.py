"""A shard: runs its feeds into its ShardWriter on one loom loop.

Why an object of its own: C1 puts one shard process per core, each the only writer of its books
and its ring. Without --cores the observer runs one shard inside the supervisor's process and
loop; with --cores each `Shard` runs in a pinned child process (observer/process/shardproc.py, a fork of
the zygote) with its own `Loop` and a writer on the mapping it was forked with, and nothing here
differs. A shard knows its writer, its feeds and which
segment book index each of their symbols has; it does not know about clients or the socket.

Every feed has one interface and one sink (observer/shard/feedsink.py): the shard calls
`feed.run_session(loop, writer, book_index_of)` to start it and `feed.stop_session()` to stop
it. What drives a feed is the feed's business: the session driver for exchange feeds
(observer/shard/exchangefeed.py), a deadline fiber for the synthetic one (observer/shard/tickfeed.py), a
NATS subscription for a mirror (observer/shard/natsfeed.py); all publish through the same sink, with
the same lag, counters and live/stale rule. The shard itself runs one fiber, its heartbeat, and
with many clients attached a pacer: the writer paces its wake-ups (observer/shm/writer.py,
Pacing) and the pacer fiber pays a deferred one when due.
"""

from __future__ import annotations

import logging
import time

from observer import loom
from observer.shard import schedslice
from observer.telemetry import memtrace

log = logging.getLogger("observer.shard.runner")

HEARTBEAT_PERIOD_S = 0.1
STOP_JOIN_S = 5.0            # a stop waits this long for the fibers to end, then reports them


class Shard:
    def __init__(self, index: int, writer, feeds: list, book_index_of: dict,
                 *, heartbeat_period_s: float = HEARTBEAT_PERIOD_S,
                 wake_gap_us_per_client: int = 0, slice_us: int = 0):
        """`feeds`: FeedSink objects (run_session / stop_session, exchange, books);
        `book_index_of[(exchange, symbol)]`: the segment slot of each book;
        `wake_gap_us_per_client`: pace wake-ups (writer.pace_wakes), 0 for never;
        `slice_us`: the scheduler slice the loop's thread asks for (schedslice), 0 for the
        kernel's default."""
        assert writer.shard_index == index
        self.index = index
        self.writer = writer
        self.feeds = list(feeds)
        self.book_index_of = dict(book_index_of)
        self.heartbeat_period_s = heartbeat_period_s
        self._fibers: list = []
        self.wake_gap_ns_per_client = int(wake_gap_us_per_client * 1000)
        self._wake_owed: loom.Event | None = None
        self.slice_us = slice_us

    def start(self, loop) -> None:
        if self.slice_us:  # the thread that runs the loop (start runs there)
            schedslice.request_slice(max(schedslice.SLICE_NS_MIN, self.slice_us * 1000))
        for feed in self.feeds:
            feed.run_session(loop, self.writer, self.book_index_of)
        self._fibers.append(loop.spawn(self._heartbeat))
        if self.wake_gap_ns_per_client:
            self._wake_owed = loom.Event()
            self.writer.pace_wakes(self.wake_gap_ns_per_client, self._wake_owed.post)
            self._fibers.append(loop.spawn(self._pace_wakes))
        tracer = memtrace.start(loop, f"shard{self.index}")     # None unless asked for
        if tracer is not None:
            self._fibers.append(tracer)

    def stop(self) -> None:
        """Stop the feeds' sessions, cancel the feed and heartbeat fibers and, from a fiber,
        wait until they are gone, so nothing publishes after the writer's segment is closed.

        A cancel of the calling fiber meanwhile stops nothing short: every feed is stopped and
        every fiber joined (each join within its deadline), then the cancel is raised.
        """
        fibers, self._fibers = self._fibers, []
        interrupt = None
        for feed in self.feeds:
            try:
                feed.stop_session()
            except (loom.Cancelled, TimeoutError) as exc:   # the caller's, raised after
                interrupt = interrupt or exc                  # its join: stop the rest
        loom.cancel_and_join(fibers, timeout_s=STOP_JOIN_S)
        if interrupt is not None:
            raise interrupt

    @property
    def passes(self) -> int:
        """Passes of the clock-driven feeds (a start-up check for tests and tools)."""
        return sum(getattr(feed, "passes", 0) for feed in self.feeds)

    def _heartbeat(self) -> None:
        while True:
            self.writer.heartbeat()
            loom.sleep(self.heartbeat_period_s)

    def _pace_wakes(self) -> None:
        """Pay each wake-up the writer deferred, when it is due (writer.py, Pacing)."""
        owed = self._wake_owed
        while True:
            due_ns = owed.wait()
            owed.clear()
            loom.sleep(max(0.0, (due_ns - time.monotonic_ns()) / 1e9))
            self.writer.flush_owed(due_ns)
