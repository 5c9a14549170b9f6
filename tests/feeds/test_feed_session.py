"""The session driver end to end: each adapter over real WebSocket + TLS (observer/net on loom)
against obsim, through faults, ending with books equal to the simulator's true books.

Per exchange, one session lives through: initial sync, a sequence gap, a garbage frame, an
abrupt disconnect, and the exchange's own fault (Kraken bad checksum, OKX/Bybit/Coinbase reset,
Binance 429 + server shutdown). After each, the books must be live again; at the end the stream
is paused and every book must equal obsim's true book. A sink checks that nothing is published
live while its book is not synced.
"""

import logging
import re
import time
from decimal import Decimal

import pytest

from observer import loom
from observer.book import ASK, BID
from observer.feeds import make_adapter
from observer.feeds.actions import Publish, Stale
from observer.feeds.session import Session, SessionLimits
from observer.feeds.sync import State
from obsim.harness import Obsim
from kit.procs import wait_until

EXCHANGES = ("binance", "binance-futures", "coinbase", "kraken", "okx", "bybit")
DEADLINE_S = 30.0
STALL_S = 3 * DEADLINE_S       # a Kraken stall outlasting the waits of the test that makes it
QUIET_PASSES = 25              # checks (each after a loop pass) that saw no Kraken publish
COMPARE_DEPTH = {"kraken": 10, "bybit": 50}
FAST_BACKOFF = SessionLimits(backoff_initial_s=0.05, backoff_max_s=0.5)


@pytest.fixture(scope="module")
def sim():
    args = ["--exchanges", ",".join(EXCHANGES), "--rate", "40", "--depth", "60", "--seed", "7",
            "--binance-rest-weight-max", "100000"]
    with Obsim(args) as sim:
        yield sim


class Recorder:
    """The shard's side: what was published, and whether anything went out unsynced."""

    def __init__(self, adapter):
        self.adapter = adapter
        self.publishes = 0
        self.stales = []
        self.unsynced = []

    def __call__(self, actions, recv_ns):
        for action in actions:
            if type(action) is Publish:
                self.publishes += 1
                if self.adapter.syncs[action.symbol].state is not State.LIVE:
                    self.unsynced.append(action)
            elif type(action) is Stale:
                self.stales.append(action)


def wait(predicate, what, timeout_s=DEADLINE_S):
    """A deadline for something to happen (inside a fiber), never a timing assertion."""
    return wait_until(predicate, timeout_s, what, sleep=loom.sleep)


def bracketed_session(sim, adapter, recorder, seed):
    """A session whose sink and frame hooks also log "publish", "frame" and "after" in order
    (the returned list), to check that every batch's publishes fall inside its frame."""
    events = []

    def sink(actions, recv_ns):
        events.append("publish")
        recorder(actions, recv_ns)

    session = Session(adapter, sink, ca_file=sim.ca_file, seed=seed,
                      on_frame=lambda: events.append("frame"),
                      after_frame=lambda: events.append("after"))
    return events, session


def all_live(adapter):
    return all(sync.state is State.LIVE for sync in adapter.syncs.values())


def total(adapter, field):
    return sum(getattr(sync.stats, field) for sync in adapter.syncs.values())


def differences(sim, exchange, adapter):
    """Where our books differ from obsim's true books (empty when they are equal)."""
    depth = COMPARE_DEPTH.get(exchange, 50)
    found = []
    for symbol, sync in adapter.syncs.items():
        true = sim.book(exchange, sync.native, depth=depth)
        book = adapter.books[symbol]
        for side, key in ((BID, "bids"), (ASK, "asks")):
            ours = [(Decimal(p).scaleb(book.price_exp), Decimal(s).scaleb(book.size_exp))
                    for p, s in book.levels(side, depth)]
            theirs = [(Decimal(p), Decimal(s)) for p, s in true[key]]
            if ours != theirs:
                found.append((symbol, key, ours[:3], theirs[:3]))
    return found


def converge(sim, exchange, adapter, timeout_s=DEADLINE_S):
    """The stream is paused: wait until what was in flight has arrived and the books equal
    the true books (a deadline, on a machine that may be busy), then check once more."""
    deadline_s = time.monotonic() + timeout_s
    while differences(sim, exchange, adapter) or not all_live(adapter):
        if time.monotonic() > deadline_s:
            break
        loom.sleep(0.1)
    assert all_live(adapter)
    assert differences(sim, exchange, adapter) == []


def grew(field):
    """The fault was seen: a per-book counter grew past its value before the fault."""
    return lambda adapter, session, before: total(adapter, field) > before[field]


def session_grew(field):
    return lambda adapter, session, before: getattr(session.stats, field) > before[field]


def rate_limited(adapter, session, before):
    return adapter.scheduler.rate_limited > before["rate_limited"]


# The common faults, then each exchange's own: (faults injected together, what must be seen).
COMMON = [(["gap"], grew("resyncs")), (["garbage"], session_grew("protocol_errors")),
          (["disconnect"], session_grew("disconnects"))]
SPECIAL = {
    "kraken": [(["bad_checksum"], grew("checksum_errors"))],
    "okx": [(["reset"], grew("resets"))],
    "bybit": [(["reset"], grew("resets"))],
    "coinbase": [(["reset"], grew("snapshots"))],
    "binance": [(["rest_429", "gap"], rate_limited), (["stale_snapshot", "gap"], grew("snapshots_old")),
                (["server_shutdown"], session_grew("reconnects"))],
    "binance-futures": [(["server_shutdown"], session_grew("reconnects"))],
}
OPTIONS = {"binance": {}, "binance-futures": {}}  # per exchange: adapter options beyond the defaults


def counters(adapter, session):
    values = {name: total(adapter, name) for name in adapter.syncs[next(iter(adapter.syncs))].stats.__slots__}
    values.update(session.stats.as_dict())
    values["rate_limited"] = adapter.scheduler.rate_limited if hasattr(adapter, "scheduler") else 0
    return values


@pytest.mark.timeout(120)
@pytest.mark.parametrize("exchange", EXCHANGES)
def test_session_survives_faults_and_matches_the_true_book(sim, exchange):
    symbols = sim.info["exchanges"][exchange]["symbols"]
    adapter = make_adapter(exchange, symbols, ws_url=sim.ws_url(exchange), rest_url=sim.rest_url(exchange),
                           depth=COMPARE_DEPTH.get(exchange, 50), paranoid=True, **OPTIONS.get(exchange, {}))
    recorder = Recorder(adapter)
    session = Session(adapter, recorder, ca_file=sim.ca_file, limits=FAST_BACKOFF, seed=1)
    loop = loom.Loop()

    def main():
        session.start(loop)
        try:
            wait(lambda: all_live(adapter), "all books live")
            for faults, seen in COMMON + SPECIAL[exchange]:
                before = counters(adapter, session)
                for kind in faults:
                    sim.fault(exchange, kind)
                wait(lambda: seen(adapter, session, before), f"{faults} noticed")
                wait(lambda: all_live(adapter), f"all books live again after {faults}")
            sim.pause(exchange)
            try:
                converge(sim, exchange, adapter)
            finally:
                sim.resume(exchange)
        finally:
            session.stop()

    loop.run(main)
    loop.close()
    assert recorder.unsynced == []
    assert recorder.publishes > 0
    assert session.stats.connects >= 2
    # Kraken has no sequence numbers: its lost message shows as a checksum mismatch.
    assert any(stale.reason == ("checksum" if exchange == "kraken" else "gap") for stale in recorder.stales)
    assert any(stale.reason == "disconnect" for stale in recorder.stales)
    assert all(sync.stats.reconnects >= 1 for sync in adapter.syncs.values())


@pytest.mark.timeout(120)
def test_six_feeds_on_one_loop_one_stalled_the_others_keep_publishing(sim):
    feeds = {}
    for exchange in EXCHANGES:
        adapter = make_adapter(exchange, sim.info["exchanges"][exchange]["symbols"], ws_url=sim.ws_url(exchange),
                               rest_url=sim.rest_url(exchange), depth=10, **OPTIONS.get(exchange, {}))
        if exchange == "kraken":
            # Its stall must not end in a reconnect (after silence_max_s, 10 s) while the
            # others are checked on a busy machine: here the stall is the point.
            adapter.silence_max_s = STALL_S
        recorder = Recorder(adapter)
        feeds[exchange] = (adapter, recorder, Session(adapter, recorder, ca_file=sim.ca_file, seed=2))
    loop = loom.Loop()

    def main():
        for _, _, session in feeds.values():
            session.start(loop)
        try:
            wait(lambda: all(all_live(adapter) for adapter, _, _ in feeds.values()), "all six feeds live")
            kraken = feeds["kraken"][1]
            # Longer than every wait below, so it cannot end inside the test on a busy machine
            # (the stall holds only this connection, and session.stop() closes it).
            sim.fault("kraken", "stall", duration_s=STALL_S)
            # The stall is in effect once Kraken has published nothing for half a second AND
            # for QUIET_PASSES checks, each after a loop pass that polled its socket: wall time
            # alone is not enough when this process is descheduled (data already received
            # would then be read after the check that called Kraken quiet).
            last = [kraken.publishes, time.monotonic(), 0]

            def kraken_quiet():
                if kraken.publishes != last[0]:
                    last[:] = [kraken.publishes, time.monotonic(), 0]
                last[2] += 1
                return time.monotonic() - last[1] > 0.5 and last[2] >= QUIET_PASSES

            wait(kraken_quiet, "Kraken stalled")
            before = {exchange: recorder.publishes for exchange, (_, recorder, _) in feeds.items()}
            others = [exchange for exchange in EXCHANGES if exchange != "kraken"]
            wait(lambda: all(feeds[e][1].publishes >= before[e] + 5 for e in others),
                 "the five other feeds keep publishing while Kraken is stalled")
            assert kraken.publishes == before["kraken"]
        finally:
            for _, _, session in feeds.values():
                session.stop()

    loop.run(main)
    loop.close()


@pytest.mark.timeout(60)
def test_stop_closes_every_socket(sim):
    adapter = make_adapter("okx", sim.info["exchanges"]["okx"]["symbols"], ws_url=sim.ws_url("okx"))
    session = Session(adapter, Recorder(adapter), ca_file=sim.ca_file, seed=3)
    loop = loom.Loop()
    sockets = []

    def main():
        session.start(loop)
        wait(lambda: all_live(adapter), "okx live")
        sockets.extend(session.sockets.values())
        session.stop()

    loop.run(main)
    assert sockets and all(ws.closed for ws in sockets)
    assert session.sockets == {}
    assert all(fiber.done for fiber in session.fibers)
    loop.close()


def test_frame_hooks_bracket_every_message_and_its_publishes(sim):
    """on_frame runs before the first message of a read is parsed, after_frame once the
    read's messages are done (the shard's writer.wake_ahead and writer.flush); each publish
    of a message falls between the two."""
    adapter = make_adapter("okx", sim.info["exchanges"]["okx"]["symbols"], ws_url=sim.ws_url("okx"))
    recorder = Recorder(adapter)
    events, session = bracketed_session(sim, adapter, recorder, seed=4)
    loop = loom.Loop()

    def main():
        session.start(loop)
        wait(lambda: all_live(adapter) and recorder.publishes > 20, "okx publishing")
        session.stop()

    loop.run(main)
    loop.close()
    frames = events.count("frame")
    assert 0 < frames <= session.stats.messages
    text = "".join(e[0] for e in events)  # f(rame), p(ublish), a(fter)
    assert "fp" in text  # some messages published
    # Every batch is closed by its after_frame, with its publishes in between; what is left
    # are REST snapshots and the Stale of the closing connection, each followed by its own
    # after_frame, outside any batch.
    assert set(re.sub(r"fp*a", "", text)) <= {"p", "a"}, text[:200]
    assert "pp" not in re.sub(r"fp*a", "", text), text[:200]


# -- faults inside the driver: an adapter bug, a log flood, a stopper cancelled ------------------

class InjectedBug(RuntimeError):
    """Stands for a bug in an adapter: not a FeedProtocolError, not one of MESSAGE_ERRORS."""


def buggy_adapter(exchange, sim, depth):
    """The real adapter of `exchange`, with one bug that can be armed: the next book update
    it handles after arming raises InjectedBug once the update was applied."""
    from observer.feeds import adapter_class, cover_depth

    base = adapter_class(exchange)

    class Buggy(base):
        bug_armed = False

        def publish(self, sync):
            super().publish(sync)
            if self.bug_armed:
                self.bug_armed = False
                raise InjectedBug(f"injected bug after an update of {sync.symbol}")

    depth = cover_depth(depth, base.subscription_depths("spot"))
    return Buggy(sim.info["exchanges"][exchange]["symbols"], ws_url=sim.ws_url(exchange), depth=depth)


@pytest.mark.timeout(120)
def test_a_bug_in_on_message_is_contained_like_a_bad_message(sim, caplog):
    """A non-FeedProtocolError out of on_message: after_frame still closes its frame (the
    shard's wake-ahead ends), the error is counted and logged once with its traceback, every
    book of the connection is resynced, and the connection goes on (no reconnect)."""
    exchange = "bybit"
    adapter = buggy_adapter(exchange, sim, COMPARE_DEPTH[exchange])
    recorder = Recorder(adapter)
    events, session = bracketed_session(sim, adapter, recorder, seed=5)
    loop = loom.Loop()

    def main():
        session.start(loop)
        try:
            wait(lambda: all_live(adapter), "all books live")
            before = counters(adapter, session)
            resyncs = {symbol: sync.stats.resyncs for symbol, sync in adapter.syncs.items()}
            adapter.bug_armed = True
            wait(lambda: session.stats.internal_errors == 1, "the bug hit")
            assert all(sync.stats.resyncs > resyncs[symbol] for symbol, sync in adapter.syncs.items())
            wait(lambda: all_live(adapter), "all books live again after the bug")
            assert session.stats.connects == before["connects"]        # the connection went on
            assert session.stats.disconnects == before["disconnects"]
            sim.pause(exchange)
            try:
                converge(sim, exchange, adapter)
            finally:
                sim.resume(exchange)
        finally:
            session.stop()

    with caplog.at_level(logging.WARNING, logger="observer.feeds.session"):
        loop.run(main)
    loop.close()
    assert recorder.unsynced == []
    assert {stale.reason for stale in recorder.stales} >= {"bad_message"}
    text = "".join(e[0] for e in events)  # f(rame), p(ublish), a(fter)
    left = re.sub(r"fp*a", "", text)      # outside batches: snapshots and stales, each flushed
    assert "f" not in left, "a batch was left open"
    assert "pp" not in left, text[:200]
    logged = [r for r in caplog.records if r.exc_info and r.exc_info[0] is InjectedBug]
    assert len(logged) == 1
    assert logged[0].levelno == logging.ERROR


def hooks_bug_adapter(sim):
    """The real Binance adapter (it takes REST snapshots), with one bug each in on_open,
    on_close and on_snapshot that can be armed: inside on_open once the subscriptions are
    queued, inside on_snapshot once the snapshot was applied (the book live, its publish
    queued), and at the start of on_close (nothing closed)."""
    base = make_adapter("binance", ["BTCUSDT"]).__class__

    class HooksBug(base):
        armed = set()

        def fire(self, hook):
            if hook in self.armed:
                self.armed.discard(hook)
                raise InjectedBug(f"injected bug in {hook}")

        def subscribe_conn(self, conn_id):
            super().subscribe_conn(conn_id)
            self.fire("on_open")

        def on_close(self, conn_id, reason):
            self.fire("on_close")
            return super().on_close(conn_id, reason)

        def take_snapshot(self, sync, body):
            super().take_snapshot(sync, body)
            self.fire("on_snapshot")

    return HooksBug(sim.info["exchanges"]["binance"]["symbols"], ws_url=sim.ws_url("binance"),
                    rest_url=sim.rest_url("binance"), depth=50, **OPTIONS["binance"])


@pytest.mark.timeout(120)
def test_a_bug_in_on_open_on_close_or_on_snapshot_is_contained_like_one_in_on_message(sim, caplog):
    """A non-FeedProtocolError out of on_snapshot, on_close or on_open: counted and logged once
    with its traceback, the books it left half-done start afresh, and the connection fiber
    lives on (before, on_close's escaped and ended the connection for good, on_snapshot's ended
    its fetch with the book left waiting); the books end equal to the true books."""
    adapter = hooks_bug_adapter(sim)
    recorder = Recorder(adapter)
    session = Session(adapter, recorder, ca_file=sim.ca_file, limits=FAST_BACKOFF, seed=8)
    loop = loom.Loop()

    def main():
        session.start(loop)
        try:
            wait(lambda: all_live(adapter), "all books live")
            adapter.armed = {"on_snapshot"}
            sim.fault("binance", "gap")                   # a resync: a REST snapshot
            wait(lambda: session.stats.internal_errors == 1, "the on_snapshot bug hit")
            wait(lambda: all_live(adapter), "all books live again after the on_snapshot bug")
            connects = session.stats.connects
            adapter.armed = {"on_close", "on_open"}
            sim.fault("binance", "disconnect")
            wait(lambda: session.stats.internal_errors == 3, "the on_close and on_open bugs hit")
            assert session.stats.connects == connects + 1
            wait(lambda: all_live(adapter), "all books live again after the on_open bug")
            assert not any(fiber.done for fiber in session.conn_fibers.values())
            sim.pause("binance")
            try:
                converge(sim, "binance", adapter)
            finally:
                sim.resume("binance")
        finally:
            session.stop()

    with caplog.at_level(logging.WARNING, logger="observer.feeds.session"):
        loop.run(main)
    loop.close()
    assert recorder.unsynced == []
    logged = [r for r in caplog.records if r.exc_info and r.exc_info[0] is InjectedBug]
    assert sorted(str(r.exc_info[1]) for r in logged) == [
        "injected bug in on_close", "injected bug in on_open", "injected bug in on_snapshot"]
    assert all(r.levelno == logging.ERROR for r in logged)


def test_log_once_fails_closed_with_a_count_of_what_it_dropped(caplog):
    """Past ERRORS_LOGGED_MAX distinct errors a new one is counted, not logged, with one line
    at the first and every SUPPRESSED_LOG_EVERY-th; a kind logged before stays quiet."""
    from observer.feeds import session as session_module

    adapter = make_adapter("okx", ["BTC-USDT"])
    session = Session(adapter, lambda actions, recv_ns: None)
    bound = session_module.ERRORS_LOGGED_MAX
    every = session_module.SUPPRESSED_LOG_EVERY
    dropped = 2 * every + 5
    with caplog.at_level(logging.WARNING, logger="observer.feeds.session"):
        for i in range(bound + dropped):
            session.log_once(1, f"kind {i}", "bad_message", error=f"bad message number {i}")
        session.log_once(1, "kind 0", "bad_message", error="bad message number 0 again")
    logged = [r for r in caplog.records if r.getMessage() == "bad_message"]
    suppressed = [r for r in caplog.records if r.getMessage() == "errors_suppressed"]
    assert len(logged) == bound
    assert session.stats.errors_suppressed == dropped
    assert len(suppressed) == 1 + dropped // every
    assert suppressed[-1].observer_fields["count"] == 2 * every
    assert len(session.errors_logged) == bound


@pytest.mark.timeout(60)
def test_a_stopper_cancelled_while_stopping_the_session_gets_its_cancel(sim):
    """session.stop() from a fiber that is cancelled while it waits: the session's fibers are
    all stopped and its sockets closed, and then the stopper's own Cancelled is raised (it was
    swallowed: the stopper carried on as if nobody had cancelled it)."""
    adapter = make_adapter("okx", sim.info["exchanges"]["okx"]["symbols"], ws_url=sim.ws_url("okx"))
    session = Session(adapter, Recorder(adapter), ca_file=sim.ca_file, seed=6)
    loop = loom.Loop()

    def main():
        session.start(loop)
        wait(lambda: all_live(adapter), "okx live")
        sockets = list(session.sockets.values())
        stopper = loop.spawn(session.stop, name="stopper")
        loom.sleep(0)                   # the stopper cancels the session's fibers and waits
        assert not stopper.done
        stopper.cancel()
        with pytest.raises(loom.Cancelled, match="'stopper'"):
            stopper.join()
        assert all(fiber.done for fiber in session.fibers)
        assert sockets and all(ws.closed for ws in sockets)

    loop.run(main)
    loop.close()


@pytest.mark.timeout(90)
def test_a_shard_stopper_cancelled_midway_stops_every_feed_then_raises(sim):
    """Shard.stop() over two exchange feeds, its caller cancelled while the first feed's session
    is being joined: the second feed, the stats fibers and the shard's own fibers are all
    stopped all the same, and then the caller's Cancelled is raised."""
    import os
    import secrets

    from observer.shard.exchangefeed import ExchangeFeed
    from observer.shard.runner import Shard
    from observer.shm import Segment
    from obproto.layout import BookDesc

    feeds = []
    for exchange in ("okx", "bybit"):
        adapter = make_adapter(exchange, sim.info["exchanges"][exchange]["symbols"],
                               ws_url=sim.ws_url(exchange), depth=10)
        feeds.append(ExchangeFeed(adapter, book_exchange=exchange, ca_file=sim.ca_file))
    descs = [BookDesc(feed.exchange, symbol, native, 0) for feed in feeds
             for symbol, native in feed.natives()]
    index_of = {(desc.exchange, desc.symbol): i for i, desc in enumerate(descs)}
    segment = Segment.create(f"/obtest-stop-{os.getpid()}-{secrets.token_hex(4)}", descs, 1, 10, 64)
    segment.seal()                                  # a memfd: nothing named, ever
    shard = Shard(0, segment.writer(0), feeds, index_of)
    loop = loom.Loop()

    def main():
        shard.start(loop)
        wait(lambda: all(all_live(feed.adapter) for feed in feeds), "both feeds live")
        fibers = list(shard._fibers) + [feed._stats_fiber for feed in feeds]
        fibers += [fiber for feed in feeds for fiber in feed.session.fibers]
        stopper = loop.spawn(shard.stop, name="stopper")
        loom.sleep(0)                   # the stopper waits for the first feed's session now
        assert not stopper.done
        stopper.cancel()
        with pytest.raises(loom.Cancelled, match="'stopper'"):
            stopper.join()
        assert all(fiber.done for fiber in fibers)
        assert all(feed.session.sockets == {} for feed in feeds)

    try:
        loop.run(main)
        loop.close()
    finally:
        segment.close()


def test_a_read_of_many_messages_costs_two_eventfd_writes_not_two_per_message(tmp_path):
    """Messages that arrive in one read are one batch: one wake-ahead before the first is
    parsed and one flush after the last, so a burst of a hundred diffs wakes clients twice,
    and every record is in the ring when the flush wakes them."""
    from observer.shard.exchangefeed import ExchangeFeed
    from observer.shm.segment import Segment
    from kit.procs import unique_name
    from obproto.layout import BookDesc

    args = ["--exchanges", "binance", "--start-paused", "--depth", "50", "--seed", "5",
            "--changes-per-event", "10", "--binance-rest-weight-max", "100000"]
    with Obsim(args) as paused:
        symbols = paused.info["exchanges"]["binance"]["symbols"]
        adapter = make_adapter("binance", symbols, ws_url=paused.ws_url("binance"),
                               rest_url=paused.rest_url("binance"))
        segment = Segment.create(unique_name("/batch"), [BookDesc("binance", s, s, 0) for s in symbols],
                                 1, 10, 1 << 12)
        try:
            writer = segment.writer(0, wake="eventfd")
            writes = []
            wake = writer._wake
            writer._wake = lambda: (writes.append(writer._ring_pos[0]), wake())
            feed = ExchangeFeed(adapter, book_exchange="binance", lag_bound_ms=60_000)
            feed.attach(writer, {("binance", s): i for i, s in enumerate(symbols)})
            session = Session(adapter, feed.sink, ca_file=paused.ca_file, seed=5,
                              on_frame=writer.wake_ahead, after_frame=writer.flush)
            loop = loom.Loop()
            burst = 50

            def main():
                session.start(loop)
                wait(lambda: all_live(adapter), "binance live")
                loom.sleep(0.3)                    # the snapshots' own flushes are done
                before = (session.stats.messages, len(writes), writer._ring_pos[0])
                paused.step("binance", count=burst)          # one write of 2 x 50 diffs
                wait(lambda: session.stats.messages >= before[0] + burst * len(symbols),
                     "the burst received")
                wait(lambda: len(writes) > before[1] and writes[-1] == writer._ring_pos[0],
                     "the burst flushed")
                received = session.stats.messages - before[0]
                published = writer._ring_pos[0] - before[2]
                burst_writes = writes[before[1]:]
                session.stop()
                assert received == published == burst * len(symbols)
                # Two per read (a wake-ahead, then the flush after the read's messages): a
                # burst of 100 messages fits in a few reads, never one write per message.
                assert len(burst_writes) <= received // 10, burst_writes
                assert burst_writes[-1] == before[2] + published   # the last write follows all

            loop.run(main)
            loop.close()
        finally:
            segment.close()                 # a memfd: nothing named to remove
