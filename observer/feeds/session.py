"""The session driver: runs any sans-IO adapter on loom over observer/net; adapters never do I/O.

The adapter decides everything about the protocol; this module only performs its actions and
feeds it what happened. Per feed it runs:

- one fiber per connection the adapter asks for (`adapter.connections()`, the first attempts
  spaced by the exchange's `connects_per_s`, a per-IP limit everywhere): connect the
  WebSocket, `on_open`, then `recv()` -> `on_message` until the connection fails or the adapter
  asks for a reconnect; `on_close`; then wait an exponential backoff with jitter and go again,
  forever. Every attempt is counted (session stats, and `reconnects` on each book it carries).
- one ticker fiber calling `on_tick` every `tick_s` (rate-limited sends, budgeted snapshots,
  pings and silence deadlines live in the adapter and are released there);
- one short fiber per REST snapshot (`FetchSnapshot`), so a slow or refused snapshot never
  blocks the WebSocket or the other symbols. Idle HTTP clients are kept per origin (as many as
  the adapter may have snapshots in flight, so a burst reuses its connections).
- a `CatchUp` (a book's buffered frames still to apply after its snapshot) continues in a new
  fiber, that is after the loop has polled and run everyone else, so a backlog is applied a
  chunk per turn and never stalls the loop;
- when the last book that waited for a snapshot has gone live, the heap's free pages are given
  back to the system (observer/telemetry/memtrim.py): a sync burst's parsed snapshots otherwise kept
  RSS at its peak.

`Publish` and `Stale` go to the `sink(actions, recv_ns)` the shard passes in (it publishes
into the segment); `Send`, `FetchSnapshot` and `Reconnect` are done here.

Batches and wake-ups. The messages of one read from the network are one batch: `on_frame` (the
shard's `writer.wake_ahead`) runs before the first of them is parsed, and `after_frame` (its
`writer.flush`: one eventfd write) when the batch ends, just before the connection reads again
and may wait (the stream's `before_read` hook) or when it closes, whatever happened in between.
Actions from anything else (open, close, a tick, a REST snapshot) are followed by `after_frame`
at once. So a busy feed costs two eventfd writes per read (of up to 64 KiB of messages), not two
per message, and nothing published waits on the network for its wake-up.
A connection whose socket holds a backlog (it filled while the loop was busy) parses one
read of it per loop turn: loom ends a turn at a read that fills its buffer of 4 KiB or
more (loom/calls.py).

A `FeedProtocolError` from the adapter is counted and logged (once per kind of error per
connection, to keep a garbage flood from flooding the log; past `ERRORS_LOGGED_MAX` kinds new
ones are only counted, `errors_suppressed`, with one line per `SUPPRESSED_LOG_EVERY`), and
`adapter.drain()` collects what the adapter queued before failing. Any other exception from
`on_message` is a bug in the adapter: it is counted (`internal_errors`) and logged once per
kind with its traceback, the adapter has resynced the books of that connection (feeds/base.py),
and the connection goes on, as after a bad message. `on_open`, `on_close` and `on_snapshot`
are contained the same way (`adapter_input`): the books they may have left half-done are
resynced (for `on_close`, emptied until the next `on_open`), and the connection, the ticker and
the process go on. Any other failure of a connection's fiber
is a bug too: logged with its traceback, counted, and it ends only that connection, which
reconnects. A reconnect requested from another fiber cancels the connection fiber's current
wait (loom `Fiber.cancel`), which closes that socket.

Backoff: after n consecutive failures the next attempt waits between d/2 and d, d =
min(backoff_max_s, backoff_initial_s * 2**n) (equal jitter: never zero, never in lock-step
with other feeds). Only a connection that delivered messages for `healthy_after_s` resets n, so
a server that accepts and drops at once backs off like one that refuses.
"""

import logging
import random
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from observer import loom
from observer.feeds import make_adapter
from observer.feeds.actions import (CatchUp, FeedProtocolError, FetchSnapshot, Invalid, Publish,
                                    Reconnect, Send, Stale)
from observer.feeds.sync import State
from observer.telemetry import memtrim
from observer.telemetry.logs import log_event
from observer.net import NetError
from observer.net import http as net_http
from observer.net import websocket

log = logging.getLogger("observer.feeds.session")
time_ns = time.time_ns

MESSAGE_BYTES_MAX = 64 << 20  # Coinbase BTC-USD snapshots are multi-megabyte single frames
# (the other limits, with their defaults, are SessionLimits below)
HTTP_CLIENTS_IDLE_MAX = 4  # kept per origin, or as many as the adapter fetches at once
ERRORS_LOGGED_MAX = 1024  # distinct (connection, kind) errors logged once each, then counted
SUPPRESSED_LOG_EVERY = 1000  # past that bound, one line for the first and every 1000th dropped


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """How long a session waits for what, and how big a message may be; one per session."""

    tick_s: float = 0.1                 # on_tick period (the adapters' contract: <= 0.25 s)
    connect_timeout_s: float = 10.0
    recv_timeout_s: float = 60.0
    message_bytes_max: int = MESSAGE_BYTES_MAX
    backoff_initial_s: float = 0.25
    backoff_max_s: float = 30.0
    healthy_after_s: float = 10.0       # a connection delivering this long resets the backoff
    http_timeout_s: float = 10.0

    def __post_init__(self):
        assert 0 < self.tick_s <= 0.25
        assert 0 < self.backoff_initial_s <= self.backoff_max_s
        assert self.connect_timeout_s > 0 and self.recv_timeout_s > 0 and self.http_timeout_s > 0
        assert self.message_bytes_max > 0 and self.healthy_after_s >= 0


class LoomClock:
    """The session's clock: monotonic seconds, and a sleep that lets the loop run. Tests pass
    a fake one, so backoff and health are checked without waiting real seconds."""

    monotonic = staticmethod(time.monotonic)
    sleep = staticmethod(loom.sleep)


class SessionStats:
    __slots__ = ("connects", "connect_failures", "disconnects", "reconnects", "messages",
                 "protocol_errors", "sends", "send_failures", "snapshot_fetches",
                 "snapshot_failures", "internal_errors", "errors_suppressed", "catch_ups",
                 "memory_trims")

    def __init__(self):
        for name in self.__slots__:
            setattr(self, name, 0)

    def as_dict(self):
        return {name: getattr(self, name) for name in self.__slots__}


class Session:
    """Runs one adapter. `start(loop)` spawns its fibers; `stop()` ends them."""

    def __init__(self, adapter, sink, *, limits=SessionLimits(), ca_file=None, ssl_context=None,
                 seed=None, on_frame=None, after_frame=None, clock=LoomClock):
        self.adapter = adapter
        self.sink = sink
        self.limits = limits
        self.clock = clock
        self.ca_file = ca_file
        self.ssl_context = ssl_context
        # Called around each batch of messages (one read's): the shard's writer.wake_ahead and
        # writer.flush, so clients' wake-ups start while the first message is parsed.
        self.on_frame = on_frame or _nothing
        self.after_frame = after_frame or _nothing
        self.rng = random.Random(seed)
        self.stats = SessionStats()
        self.batch_open = False  # on_frame ran for messages whose after_frame is still due
        self.sockets = {}  # conn_id -> open WebSocket
        self.conn_fibers = {}  # conn_id -> the fiber running that connection
        self.reconnect_reasons = {}  # conn_id -> why a reconnect was asked for
        self.http_idle = {}  # origin -> [HttpClient]
        self.errors_logged = set()
        scheduler = getattr(adapter, "scheduler", None)
        self.http_idle_max = max(HTTP_CLIENTS_IDLE_MAX, getattr(scheduler, "inflight_max", 0))
        self.syncing = False  # some book waited for a snapshot at the last tick
        self.loop = None
        self.fibers = []
        self.stopping = False

    @classmethod
    def for_feed(cls, feed, sink, *, depth, **options):
        """A session for one configured feed (observer.config.settings.FeedConfig: exchange, symbols,
        ws_url, rest_url, ca_file, category, depth); `depth` is the observer's depth, used when
        the feed sets none. Paranoid invariant checks stay off here (tests turn them on)."""
        adapter = make_adapter(feed.exchange, list(feed.symbols), ws_url=feed.ws_url,
                               rest_url=feed.rest_url, depth=feed.depth or depth,
                               category=feed.category)
        return cls(adapter, sink, ca_file=feed.ca_file, **options)

    # ------------------------------------------------------------------------ lifetime

    def start(self, loop):
        self.loop = loop
        for index, spec in enumerate(self.adapter.connections()):
            start_delay_s = index / self.adapter.connects_per_s
            fiber = loop.spawn(self.run_connection, spec, start_delay_s,
                               name=f"{self.adapter.exchange}-conn{spec.conn_id}")
            self.conn_fibers[spec.conn_id] = fiber
            self.fibers.append(fiber)
        self.fibers.append(loop.spawn(self.run_ticker, name=f"{self.adapter.exchange}-tick"))

    def stop(self, wait_s=2.0):
        """Cancel every fiber of the session; called from a fiber, wait (at most wait_s in all)
        until they have unwound, so their sockets are closed when this returns. Outside the
        loop it only cancels (loop.close() finishes them). A cancel of the calling fiber while
        it waits is raised once they have (loom.cancel_and_join)."""
        self.stopping = True
        try:
            loom.cancel_and_join(self.fibers, timeout_s=wait_s)
        finally:
            for clients in self.http_idle.values():
                for client in clients:
                    client.close()
            self.http_idle.clear()

    # --------------------------------------------------------------------- connections

    def run_connection(self, spec, start_delay_s=0.0):
        clock = self.clock
        failures = 0
        first = True
        while not self.stopping:
            started_s = clock.monotonic()
            try:
                if first and start_delay_s:
                    clock.sleep(start_delay_s)  # the first connections are spaced per IP
                if not first:
                    clock.sleep(self.backoff_s(failures))
                first = False
                started_s = clock.monotonic()
                delivered = self.connect_once(spec)
            except loom.Cancelled:
                if self.stopping:
                    return
                delivered = True  # a reconnect the adapter asked for
            failures = self.failures_after(failures, delivered, clock.monotonic() - started_s)
            self.stats.reconnects += 1
            for symbol in spec.symbols:
                self.adapter.syncs[symbol].stats.reconnects += 1

    def failures_after(self, failures, delivered, lived_s):
        """Only a connection that lived and delivered resets the backoff: one that flaps
        (accepted, then closed at once) must not become a reconnect storm."""
        healthy = delivered and lived_s >= self.limits.healthy_after_s
        return 0 if healthy else failures + 1

    def backoff_s(self, failures):
        limits = self.limits
        ceiling_s = min(limits.backoff_max_s, limits.backoff_initial_s * 2 ** min(failures, 30))
        return ceiling_s / 2 + self.rng.uniform(0, ceiling_s / 2)

    def connect_once(self, spec):
        """One connection's life. Returns True if at least one message arrived."""
        self.stats.connects += 1
        try:
            limits = self.limits
            ws = websocket.connect(spec.url, ca_file=self.ca_file, ssl_context=self.ssl_context,
                                   timeout_s=limits.connect_timeout_s,
                                   recv_timeout_s=limits.recv_timeout_s,
                                   message_bytes_max=limits.message_bytes_max)
        except NetError as exc:
            self.stats.connect_failures += 1
            self.log_once(spec.conn_id, "connect", "connect_failed", url=spec.url, error=str(exc))
            return False
        conn_id = spec.conn_id
        self.sockets[conn_id] = ws
        self.reconnect_reasons.pop(conn_id, None)
        delivered = False
        reason = "closed"
        ws.before_read = self.end_batch
        stats = self.stats
        try:
            self.perform(self.adapter_input("on_open", conn_id, self.adapter.resync_conn,
                                            self.adapter.on_open, conn_id, time.time_ns()), 0)
            while conn_id not in self.reconnect_reasons:
                message = ws.recv()
                delivered = True
                stats.messages += 1
                self.deliver(conn_id, message.data)
            reason = self.reconnect_reasons[conn_id]
        except NetError as exc:
            reason = f"{type(exc).__name__}: {exc}"
            self.stats.disconnects += 1
        except loom.Cancelled:
            reason = self.reconnect_reasons.get(conn_id, "stopped")
            raise
        except Exception as exc:  # a bug: contained to this connection, loud, and retried
            self.stats.internal_errors += 1
            log_event(log, "internal_error", level=logging.ERROR, exc_info=True,
                      exchange=self.adapter.exchange, conn=conn_id, where="connection")
            reason = f"internal error: {type(exc).__name__}"
            delivered = False  # back off as for a failure: a bug must not spin
        finally:
            ws.before_read = None
            self.end_batch()
            del self.sockets[conn_id]
            if self.stopping:
                ws.stream.close()
            else:
                # once per lost connection, with its books; the reconnect follows (backoff)
                log_event(log, "disconnected", level=logging.WARNING,
                          exchange=self.adapter.exchange, conn=conn_id, reason=reason,
                          books=",".join(spec.symbols))
                ws.close(timeout_s=0.5)
            self.perform(self.adapter_input("on_close", conn_id, self.adapter.abandon_conn,
                                            self.adapter.on_close, conn_id, reason), 0)
        return delivered

    def deliver(self, conn_id, data):
        """One message of the current batch (module essay: batches and wake-ups)."""
        if not self.batch_open:
            self.batch_open = True
            self.on_frame()
        recv_ns = time_ns()
        actions = self.parse(conn_id, data, recv_ns)
        if actions:
            self.perform(actions, recv_ns, in_batch=True)

    def parse(self, conn_id, data, recv_ns):
        """The adapter's actions for one message; a bad message, or a bug in the adapter, is
        counted and logged, and what the adapter queued before failing (the resync of the
        books it may have left half-applied) is collected with `drain()`."""
        try:
            return self.adapter.on_message(conn_id, data, recv_ns)
        except FeedProtocolError as exc:
            self.stats.protocol_errors += 1
            self.log_once(conn_id, str(exc)[:40], "bad_message", conn=conn_id, error=str(exc))
        except Exception as exc:  # a bug: contained like a bad message, but with its traceback
            self.stats.internal_errors += 1
            self.log_once(conn_id, f"internal {type(exc).__name__}", "internal_error",
                          exc_info=exc, level=logging.ERROR, conn=conn_id, where="on_message")
        return self.adapter.drain()

    def adapter_input(self, where, conn_id, recover, call, *args):
        """`call(*args)` (an adapter input other than a message), contained as `parse` contains
        on_message: a FeedProtocolError is counted and logged once per kind; any other
        exception is a bug, counted and logged once per kind with its traceback, after which
        `recover(conn_id)` starts afresh the books the input may have left half-done. What the
        adapter queued is returned either way."""
        try:
            return call(*args)
        except FeedProtocolError as exc:
            self.stats.protocol_errors += 1
            self.log_once(conn_id, f"{where} {str(exc)[:40]}", "bad_input", conn=conn_id,
                          where=where, error=str(exc))
        except Exception as exc:  # a bug in the adapter: loud, but the feed goes on
            self.stats.internal_errors += 1
            self.log_once(conn_id, f"internal {where} {type(exc).__name__}", "internal_error",
                          exc_info=exc, level=logging.ERROR, conn=conn_id, where=where)
            recover(conn_id)
        return self.adapter.drain()

    def end_batch(self):
        """The batch's after_frame: before the connection reads again, and when it closes."""
        if self.batch_open:
            self.batch_open = False
            self.after_frame()

    def run_ticker(self):
        while not self.stopping:
            self.clock.sleep(self.limits.tick_s)
            try:
                self.perform(self.adapter.on_tick(time.time_ns()), 0)
                self.trim_after_sync()
            except Exception:  # a bug: keep ticking (keepalives), but loudly
                self.stats.internal_errors += 1
                log_event(log, "internal_error", level=logging.ERROR, exc_info=True,
                          exchange=self.adapter.exchange, where="on_tick")

    def trim_after_sync(self):
        """Once no book waits for its snapshot any more, return the burst's free heap memory
        (once per burst: only on the tick that sees the last one done)."""
        syncing = any(sync.state is State.SUBSCRIBING or sync.state is State.AWAITING_SNAPSHOT
                      for sync in self.adapter.syncs.values())
        if self.syncing and not syncing:
            self.stats.memory_trims += 1
            memtrim.trim()
        self.syncing = syncing

    # ------------------------------------------------------------------------- actions

    def perform(self, actions, recv_ns, in_batch=False):
        """Do the adapter's actions; publishes go to the sink, followed by after_frame unless
        they belong to a batch of messages (whose after_frame is due before the next read)."""
        if not actions:
            return
        for action in actions:  # the common case, a message's publishes: the list as it is
            kind = type(action)
            if kind is not Publish and kind is not Stale:
                break
        else:
            self.sink(actions, recv_ns or time.time_ns())
            if not in_batch:
                self.after_frame()
            return
        published = []
        for action in actions:
            kind = type(action)
            if kind is Publish or kind is Stale or kind is Invalid:
                published.append(action)
            elif kind is Send:
                self.send(action)
            elif kind is FetchSnapshot:
                self.stats.snapshot_fetches += 1
                self.fibers.append(self.loop.spawn(self.fetch_snapshot, action, name="snapshot"))
                self.fibers = [fiber for fiber in self.fibers if not fiber.done]
            elif kind is CatchUp:
                self.stats.catch_ups += 1
                self.fibers.append(self.loop.spawn(self.catch_up, action.symbol, name="catch-up"))
            elif kind is Reconnect:
                self.request_reconnect(action.conn_id, action.reason)
            else:
                raise TypeError(f"unknown action {action!r}")
        if published:
            self.sink(published, recv_ns or time.time_ns())
            if not in_batch:
                self.after_frame()

    def send(self, action):
        ws = self.sockets.get(action.conn_id)
        if ws is None:
            return  # the connection dropped meanwhile: on_open resubscribes everything
        try:
            ws.send_text(action.text)
            self.stats.sends += 1
        except NetError as exc:
            self.stats.send_failures += 1
            self.request_reconnect(action.conn_id, f"send failed: {exc}")

    def request_reconnect(self, conn_id, reason):
        if conn_id in self.reconnect_reasons:
            return
        self.reconnect_reasons[conn_id] = reason
        # debug: the "disconnected" line that follows carries the same reason and the books
        log_event(log, "reconnect_requested", level=logging.DEBUG, exchange=self.adapter.exchange,
                  conn=conn_id, reason=reason)
        fiber = self.conn_fibers.get(conn_id)
        if fiber is not None and fiber is not loom.current_fiber() and conn_id in self.sockets:
            fiber.cancel()  # wakes its recv; the connection loop reconnects

    def fetch_snapshot(self, action):
        parts = urlsplit(action.url)
        origin = f"{parts.scheme}://{parts.netloc}"
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        idle = self.http_idle.setdefault(origin, [])
        client = idle.pop() if idle else net_http.HttpClient(
            origin, ca_file=self.ca_file, ssl_context=self.ssl_context,
            timeout_s=self.limits.http_timeout_s, body_bytes_max=self.limits.message_bytes_max)
        try:
            response = client.get(path)
            status, headers, body = response.status, response.headers, response.body
        except NetError as exc:
            self.stats.snapshot_failures += 1
            self.log_once(-1, "snapshot", "snapshot_failed", url=action.url, error=str(exc))
            client.close()
            client = None
            status, headers, body = 0, {}, b""
        if client is not None and not self.stopping and len(idle) < self.http_idle_max:
            idle.append(client)
        elif client is not None:
            client.close()
        recv_ns = time.time_ns()
        symbol = action.symbol
        actions = self.adapter_input("on_snapshot", -1, lambda _: self.adapter.resync_symbol(symbol),
                                     self.adapter.on_snapshot, symbol, status, headers, body,
                                     recv_ns)
        self.perform(actions, recv_ns)

    def catch_up(self, symbol):
        """The next chunk of a book's backlog (a fiber of its own: the loop ran meanwhile)."""
        recv_ns = time.time_ns()
        actions = self.adapter_input("on_catch_up", -1, lambda _: self.adapter.resync_symbol(symbol),
                                     self.adapter.on_catch_up, symbol, recv_ns)
        self.perform(actions, recv_ns)

    def log_once(self, conn_id, kind, event, exc_info=None, level=logging.WARNING, **fields):
        """Log `text` the first time (conn_id, kind) is seen. Fails closed: once
        ERRORS_LOGGED_MAX keys are kept, a new one is counted (`errors_suppressed`), not
        logged, with one line saying so at the first and every SUPPRESSED_LOG_EVERY-th."""
        key = (conn_id, kind)
        if key in self.errors_logged:
            return
        if len(self.errors_logged) < ERRORS_LOGGED_MAX:
            self.errors_logged.add(key)
            log_event(log, event, level=level, exc_info=exc_info, exchange=self.adapter.exchange,
                      **fields)
            return
        self.stats.errors_suppressed += 1
        suppressed = self.stats.errors_suppressed
        if suppressed == 1 or suppressed % SUPPRESSED_LOG_EVERY == 0:
            log_event(log, "errors_suppressed", level=logging.WARNING,
                      exchange=self.adapter.exchange, count=suppressed,
                      errors_logged_max=ERRORS_LOGGED_MAX)


def _nothing() -> None:
    pass
