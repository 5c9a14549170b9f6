"""A clock-driven feed inside a shard: a sans-IO adapter that has no socket, only deadlines.

Why a module of its own: the synthetic walk (observer/feeds/synthetic.py) needs no network, but
its books must reach clients exactly as an exchange's do: through the one sink
(observer/shard/feedsink.py) with lag, counters and the live/stale log. This is its driver, the
counterpart of the session driver of exchange feeds: one fiber sleeps until the adapter's next
deadline, hands it the time, gives the actions it returns to the sink and flushes the writer
once per pass (one eventfd write per batch, C6).

A bug in the adapter must not leave its books looking live: the fiber marks them stale for
clients, then lets loom log the error with the fiber's name.

The start snapshot is published by `run_session` itself, before the loop runs anything else:
a client attached to a fresh observer finds its synthetic books already published.
"""

from __future__ import annotations

import logging
import time

from observer import loom
from observer.feeds.sync import SymbolSync
from observer.telemetry.logs import log_event
from observer.shard.feedsink import LAG_BOUND_MS_DEFAULT, STATS_PERIOD_S, STATS_STOP_S, FeedSink

TICK_MIN_S = 0.0005          # never sleep less than this between passes

log = logging.getLogger("observer.feeds")


class TickedFeed(FeedSink):
    """`adapter`: start(now_ns) / on_tick(now_ns) -> actions, next_deadline_ns(), books."""

    def __init__(self, adapter, *, lag_bound_ms=LAG_BOUND_MS_DEFAULT,
                 stats_period_s=STATS_PERIOD_S):
        syncs = {symbol: SymbolSync(symbol, symbol, -1) for symbol in adapter.books}
        super().__init__(exchange=adapter.exchange, books=adapter.books, syncs=syncs,
                         lag_bound_ms=lag_bound_ms, stats_period_s=stats_period_s)
        self.adapter = adapter
        self.passes = 0
        self._fiber = None

    def run_session(self, loop, writer, book_index_of) -> None:
        """Attach, publish the start snapshot now, then tick in a fiber. Now, not in the
        fiber: the shard starts its feeds before the loop serves a client, so no client of a
        synthetic feed ever sees its books unpublished."""
        self.attach(writer, book_index_of)
        try:
            self._pass(self.adapter.start(time.time_ns()))
        except Exception:
            self.mark_all_stale("feed error")
            log_event(log, "feed_start_failed", level=logging.ERROR, exc_info=True,
                      feed=self.exchange, note="its books stay stale")
            return
        self._fiber = loop.spawn(self._run, name=f"{self.exchange}-feed")
        self.start_stats(loop)

    def stop_session(self) -> None:
        self.stopping = True            # a clean stop: books go stale without a line each
        fiber, self._fiber = self._fiber, None
        try:
            self.stop_stats()
        finally:
            if fiber is not None:
                loom.cancel_and_join([fiber], timeout_s=STATS_STOP_S)

    def fibers(self) -> list:
        return [f for f in (self._fiber, self._stats_fiber) if f is not None]

    def _run(self) -> None:
        try:
            while True:
                wait_s = (self.adapter.next_deadline_ns() - time.time_ns()) / 1e9
                loom.sleep(max(TICK_MIN_S, wait_s))
                self._pass(self.adapter.on_tick(time.time_ns()))
        except Exception:
            self.mark_all_stale("feed error")
            raise

    def _pass(self, actions) -> None:
        self.sink(actions, time.time_ns())
        self.writer.flush()
        self.passes += 1

