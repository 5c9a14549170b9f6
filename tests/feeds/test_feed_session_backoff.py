"""The session's reconnect policy without a network: backoff with jitter, bounded, forever."""

import socket
import time

from observer import loom
from observer.feeds import make_adapter
from observer.feeds.session import Session


def test_backoff_grows_with_jitter_and_is_capped():
    session = Session(make_adapter("kraken", ["BTC/USD"]), lambda actions, recv_ns: None,
                      backoff_initial_s=0.25, backoff_max_s=30.0, seed=3)
    for failures, ceiling_s in ((0, 0.25), (1, 0.5), (3, 2.0), (10, 30.0), (1000, 30.0)):
        waits = [session.backoff_s(failures) for _ in range(200)]
        assert all(ceiling_s / 2 <= w <= ceiling_s for w in waits)
        assert len(set(waits)) > 100  # jittered, not in lock-step


def test_refused_connections_are_retried_with_growing_backoff():
    """A port nobody listens on: every attempt fails, is counted, and the next one waits."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # now nothing listens there
    adapter = make_adapter("okx", ["BTC-USDT"], ws_url=f"ws://127.0.0.1:{port}/ws/v5/public")
    published = []
    session = Session(adapter, lambda actions, recv_ns: published.extend(actions),
                      backoff_initial_s=0.01, backoff_max_s=0.05, seed=4)
    loop = loom.Loop()

    def main():
        session.start(loop)
        deadline_s = time.monotonic() + 30
        try:
            while session.stats.connect_failures < 5:
                assert time.monotonic() < deadline_s, "5 refused attempts not seen within 30 s"
                loom.sleep(0.01)
        finally:
            session.stop()

    loop.run(main)
    loop.close()
    assert session.stats.connect_failures >= 5
    assert session.stats.reconnects >= 4
    assert adapter.syncs["BTCUSDT"].stats.reconnects >= 4
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
