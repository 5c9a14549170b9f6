"""The session's reconnect policy without a network: backoff with jitter, bounded, forever."""

import socket

from observer import loom
from observer.feeds import make_adapter
from observer.feeds.session import Session, SessionLimits
from kit.procs import wait_until


class FakeClock:
    """The session's clock, without real seconds: a sleep advances the time at once (and lets
    the loop run a turn) and is recorded with the fiber that slept."""

    def __init__(self):
        self.now_s = 1000.0
        self.slept = []

    def monotonic(self):
        return self.now_s

    def sleep(self, seconds):
        self.slept.append((loom.current_fiber().name, seconds))
        self.now_s += seconds
        loom.sleep(0)


def test_backoff_grows_with_jitter_and_is_capped():
    limits = SessionLimits(backoff_initial_s=0.25, backoff_max_s=30.0)
    session = Session(make_adapter("kraken", ["BTC/USD"]), lambda actions, recv_ns: None,
                      limits=limits, seed=3)
    for failures, ceiling_s in ((0, 0.25), (1, 0.5), (3, 2.0), (10, 30.0), (1000, 30.0)):
        waits = [session.backoff_s(failures) for _ in range(200)]
        assert all(ceiling_s / 2 <= w <= ceiling_s for w in waits)
        assert len(set(waits)) > 100  # jittered, not in lock-step


def test_only_a_connection_that_delivered_long_enough_resets_the_backoff():
    session = Session(make_adapter("kraken", ["BTC/USD"]), lambda actions, recv_ns: None,
                      limits=SessionLimits(healthy_after_s=10.0), seed=3)
    assert session.failures_after(3, delivered=True, lived_s=10.0) == 0
    assert session.failures_after(3, delivered=True, lived_s=9.9) == 4      # flapping
    assert session.failures_after(3, delivered=False, lived_s=100.0) == 4   # never delivered


REFUSALS = 9    # the backoff reaches its 30 s cap on the 7th


def test_refused_connections_are_retried_with_growing_backoff():
    """A port nobody listens on: every attempt fails, is counted, and the next one waits its
    backoff (doubling up to the cap, jittered), by the session's clock: no real seconds."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # now nothing listens there
    adapter = make_adapter("okx", ["BTC-USDT"], ws_url=f"ws://127.0.0.1:{port}/ws/v5/public")
    published = []
    clock = FakeClock()
    session = Session(adapter, lambda actions, recv_ns: published.extend(actions),
                      limits=SessionLimits(backoff_initial_s=0.25, backoff_max_s=30.0),
                      seed=4, clock=clock)
    loop = loom.Loop()

    def main():
        session.start(loop)
        try:
            wait_until(lambda: session.stats.connect_failures >= REFUSALS, 60.0,
                       f"{REFUSALS} refused attempts", sleep=loom.sleep)
        finally:
            session.stop()

    loop.run(main)
    loop.close()
    waits = [s for fiber, s in clock.slept if fiber == "okx-conn0"]
    assert len(waits) >= REFUSALS - 1
    for failures, wait_s in enumerate(waits[: REFUSALS - 1], start=1):
        ceiling_s = min(30.0, 0.25 * 2**failures)
        assert ceiling_s / 2 <= wait_s <= ceiling_s, (failures, waits)
    assert session.stats.connect_failures >= REFUSALS
    assert session.stats.reconnects >= REFUSALS - 1
    assert adapter.syncs["BTCUSDT"].stats.reconnects >= REFUSALS - 1
    assert published == []


def test_a_session_from_a_feed_config(tmp_path):
    from observer.config.settings import parse_feed_spec
    from obsim.tls import make_certificates

    ca_file = make_certificates(tmp_path)[0]      # a real CA: the file is checked at start-up
    feed = parse_feed_spec("bybit/linear:BTCUSDT,ETHUSDT", ca_file=str(ca_file))
    session = Session.for_feed(feed, lambda actions, recv_ns: None, depth=20)
    adapter = session.adapter
    assert (adapter.exchange, adapter.category, adapter.depth) == ("bybit", "linear", 50)
    assert sorted(adapter.books) == ["BTCUSDT", "ETHUSDT"]
    assert adapter.connections()[0].url == "wss://stream.bybit.com/v5/public/linear"
    assert session.ca_file == str(ca_file)
    kraken = Session.for_feed(parse_feed_spec("kraken:BTC/USD"), lambda actions, recv_ns: None, depth=50)
    assert kraken.adapter.depth == 100
    assert kraken.adapter.connections()[0].url == "wss://ws.kraken.com/v2"
