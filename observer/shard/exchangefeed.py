"""An exchange feed inside a shard: one adapter, its session driver, and the sink it fills.

Why a module of its own: the adapter (observer/feeds/<exchange>.py) decides what is synced and
the session driver (observer/feeds/session.py) owns the sockets; neither knows the segment. The
sink between them and the shard's `ShardWriter` is every feed's (observer/shard/feedsink.py: publish,
stale, lag, counters); this adds the session and one measure of its own:

- The session calls `writer.flush()` (its `after_frame`) once per batch, the messages of one
  read from the network, or after any other call that published (C6).
- Unread bytes (C11's second measure): the stats fiber samples, per connection, the bytes
  received and not yet parsed (`WebSocket.unread_bytes()`: the socket's kernel receive queue by
  FIONREAD, plus the TLS and WebSocket buffers) and stores it as `unread_bytes` of every book
  that connection carries; 0 while it is disconnected. The time lag says how old the data being
  parsed is; this says how much more is already waiting (a feed that has fallen behind shows
  both, and a stalled reader shows bytes before any late message can show its lag).

Discussion: a stalled connection publishes nothing, so its lag cannot be measured until the
held messages arrive; they then carry their old event times and the book shows as lagging
until the feed has caught up. A silent connection is the adapter's business (`silence_max_s`
turns it into a reconnect, and the book goes stale).
"""

from __future__ import annotations

from observer import loom
from observer.feeds.session import Session, SessionLimits
from observer.shard.feedsink import (LAG_BOUND_MS_DEFAULT, STATS_COPIED, STATS_PERIOD_S,  # noqa: F401
                               STATS_STOP_S, BookSlot, FeedSink)


class ExchangeFeed(FeedSink):
    """One configured exchange feed: `adapter` plus how to run it. The shard calls
    `run_session(loop, writer, book_index_of)` and, to stop, `stop_session()`."""

    def __init__(self, adapter, *, book_exchange, ca_file=None, lag_bound_ms=LAG_BOUND_MS_DEFAULT,
                 session_limits=None, stats_period_s=STATS_PERIOD_S):
        super().__init__(exchange=book_exchange, books=adapter.books, syncs=adapter.syncs,
                         lag_bound_ms=lag_bound_ms, stats_period_s=stats_period_s)
        self.adapter = adapter
        self.ca_file = ca_file
        self.session_limits = session_limits or SessionLimits()
        self.session: Session | None = None
        self._unread_by_conn: dict[int, int] = {}   # reused by sample, one entry per conn

    def run_session(self, loop, writer, book_index_of) -> None:
        self.attach(writer, book_index_of)
        self.session = Session(self.adapter, self.sink, ca_file=self.ca_file,
                               on_frame=writer.wake_ahead, after_frame=writer.flush,
                               limits=self.session_limits)
        self.session.start(loop)
        self.start_stats(loop)

    def stop_session(self) -> None:
        """Stop the session and the stats fiber, waiting for both when called from a fiber (a
        cancel of the caller meanwhile is raised once both are stopped); the books are left
        stale for clients."""
        self.stopping = True            # the books go stale as asked: no book_stale per book
        stats_fiber, self._stats_fiber = self._stats_fiber, None
        if stats_fiber is not None:
            stats_fiber.cancel()        # first: it samples the sockets the session closes
        try:
            if self.session is not None:
                self.session.stop()
        finally:
            if stats_fiber is not None:
                loom.join_all([stats_fiber], timeout_s=STATS_STOP_S)

    def sample(self) -> None:
        """Each book's `unread_bytes`: its connection's backlog (one ioctl per connection)."""
        sockets = self.session.sockets if self.session is not None else {}
        unread_by_conn = self._unread_by_conn
        unread_by_conn.clear()
        for conn_id, ws in sockets.items():
            unread_by_conn[conn_id] = ws.unread_bytes()
        for slot in self.slots.values():
            unread_bytes = unread_by_conn.get(slot.sync.conn_id, 0)   # 0: not connected
            if slot.stats.unread_bytes != unread_bytes:
                slot.stats.unread_bytes = unread_bytes
