"""A shard: runs its feeds into its ShardWriter on one loom loop.

Why an object of its own: C1 puts one shard process per core, each the only writer of its books
and its ring. Without --cores the observer runs one shard inside the supervisor's process and
loop; with --cores each `Shard` runs in a pinned child process (observer/process/shardproc.py, a fork of
the zygote) with its own `Loop` and a writer on the mapping it was forked with, and nothing here
differs. A shard knows its writer, its feeds and which
segment book index each of their symbols has; it does not know about clients or the socket.

One fiber per feed, and one for the shard heartbeat. A feed fiber sleeps until the feed's next
deadline, hands it the time, publishes the books its actions name and flushes the writer once
per pass (one eventfd write per batch, C6). Exchange feeds (observer/shard/exchangefeed.py) bring
their own fibers: the session driver (observer/feeds/session.py) owns their I/O and publishes
through the feed's sink into this shard's writer; the shard starts and stops them.
"""

from __future__ import annotations

import logging
import time

from observer import loom
from observer.telemetry import memtrace
from observer.feeds.actions import Publish, Stale

log = logging.getLogger("observer.shard.runner")

HEARTBEAT_PERIOD_S = 0.1
TICK_MIN_S = 0.0005          # never sleep less than this between feed passes
STOP_JOIN_S = 5.0            # a stop waits this long for the fibers to end, then reports them


class Shard:
    def __init__(self, index: int, writer, feeds: list, book_index_of: dict,
                 *, heartbeat_period_s: float = HEARTBEAT_PERIOD_S):
        """`feeds`: sans-IO feed objects with start/on_tick/next_deadline_ns/books;
        `book_index_of[(exchange, symbol)]`: the segment slot of each book."""
        assert writer.shard_index == index
        self.index = index
        self.writer = writer
        self.feeds = list(feeds)
        self.book_index_of = dict(book_index_of)
        self.heartbeat_period_s = heartbeat_period_s
        self.passes = 0
        self.publishes = 0
        self._fibers: list = []

    def start(self, loop) -> None:
        for feed in self.feeds:
            if hasattr(feed, "run_session"):  # exchange feeds: the session driver owns their I/O
                feed.run_session(loop, self.writer, self.book_index_of)
            else:
                self._fibers.append(loop.spawn(self._run_feed, feed))
        self._fibers.append(loop.spawn(self._heartbeat))
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
            if hasattr(feed, "stop_session"):
                try:
                    feed.stop_session()
                except (loom.Cancelled, TimeoutError) as exc:   # the caller's, raised after
                    interrupt = interrupt or exc                  # its join: stop the rest
        loom.cancel_and_join(fibers, timeout_s=STOP_JOIN_S)
        if interrupt is not None:
            raise interrupt

    def _run_feed(self, feed) -> None:
        try:
            self._feed_loop(feed)
        except Exception:
            # A feed bug must not leave its books looking live: mark them stale for clients,
            # then let loom log the error with the fiber's name.
            for symbol in feed.books:
                self.writer.mark_stale(self.book_index_of[(feed.exchange, symbol)])
            self.writer.flush()
            raise

    def _feed_loop(self, feed) -> None:
        self._apply(feed, feed.start(time.time_ns()))
        while True:
            wait_s = (feed.next_deadline_ns() - time.time_ns()) / 1e9
            loom.sleep(max(TICK_MIN_S, wait_s))
            self._apply(feed, feed.on_tick(time.time_ns()))

    def _apply(self, feed, actions) -> None:
        recv_ts_ns = time.time_ns()
        for action in actions:
            book_index = self.book_index_of[(feed.exchange, action.symbol)]
            if type(action) is Publish:
                self.writer.publish(book_index, feed.books[action.symbol], recv_ts_ns=recv_ts_ns)
                self.publishes += 1
            elif type(action) is Stale:
                self.writer.mark_stale(book_index)
        self.writer.flush()
        self.passes += 1

    def _heartbeat(self) -> None:
        while True:
            self.writer.heartbeat()
            loom.sleep(self.heartbeat_period_s)
