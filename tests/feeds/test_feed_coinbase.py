"""Coinbase Advanced Trade level2 adapter: offer side, snapshot replaces, sequence_num per connection."""

import orjson
import pytest

from observer.book import ASK, BID
from observer.feeds.actions import FeedProtocolError, Publish, Reconnect, Send, Stale
from observer.feeds.coinbase import CoinbaseAdapter
from observer.feeds.sync import State

NS = 1_000_000_000


class Wire:
    """Numbers the messages of one connection, as Coinbase does."""

    def __init__(self):
        self.seq = -1

    def msg(self, channel, events, skip=0):
        self.seq += 1 + skip
        return orjson.dumps({"channel": channel, "client_id": "", "timestamp": "2026-11-01T12:00:00.1Z",
                             "sequence_num": self.seq, "events": events})

    def l2(self, kind, product, levels, skip=0):
        updates = [{"side": side, "event_time": "2026-11-01T12:00:00.120Z", "price_level": p, "new_quantity": q}
                   for side, p, q in levels]
        return self.msg("l2_data", [{"type": kind, "product_id": product, "updates": updates}], skip)


SNAP = [("bid", "67999.00", "1.5"), ("bid", "67998.50", "2"), ("offer", "68001.25", "0.05"),
        ("offer", "68002", "1")]


@pytest.fixture
def coinbase():
    adapter = CoinbaseAdapter(["BTC-USD", "ETH-USD"], paranoid=True)
    sends = adapter.on_open(0, 0)
    assert [orjson.loads(s.text) for s in sends] == [
        {"type": "subscribe", "product_ids": ["BTC-USD", "ETH-USD"], "channel": "level2"},
        {"type": "subscribe", "product_ids": ["BTC-USD", "ETH-USD"], "channel": "heartbeats"}]
    wire = Wire()
    adapter.on_message(0, wire.msg("subscriptions", [{"subscriptions": {"level2": ["BTC-USD", "ETH-USD"]}}]), 1)
    assert adapter.on_message(0, wire.l2("snapshot", "BTC-USD", SNAP), 2) == [Publish("BTCUSD")]
    assert adapter.on_message(0, wire.l2("snapshot", "ETH-USD", [("bid", "3000", "1"), ("offer", "3001", "1")]), 3) == [
        Publish("ETHUSD")]
    return adapter, wire


def test_snapshot_keeps_offers(coinbase):
    adapter, _ = coinbase
    book = adapter.books["BTCUSD"]
    assert book.levels(ASK) == [(6800125, 5), (6800200, 100)]
    assert book.levels(BID) == [(6799900, 150), (6799850, 200)]


def test_updates_apply_and_snapshot_replaces(coinbase):
    adapter, wire = coinbase
    assert adapter.on_message(0, wire.l2("update", "BTC-USD", [("offer", "68001.25", "0"), ("bid", "68000", "3")]),
                              4) == [Publish("BTCUSD")]
    book = adapter.books["BTCUSD"]
    assert book.best() == (6800000, 300, 6800200, 100)
    assert book.exch_ts_ns == 1793534400120000000
    adapter.on_message(0, wire.l2("snapshot", "BTC-USD", [("bid", "1", "1"), ("offer", "2", "1")]), 5)
    assert book.best() == (100, 100, 200, 100)


def test_sequence_jump_resubscribes_every_book_on_the_connection_at_once(coinbase):
    adapter, wire = coinbase
    actions = adapter.on_message(0, wire.msg("heartbeats", [{"current_time": "x", "heartbeat_counter": 3}], skip=2), 4)
    assert Stale("BTCUSD", "gap") in actions and Stale("ETHUSD", "gap") in actions
    sends = [orjson.loads(a.text) for a in actions if isinstance(a, Send)]
    assert sends == [{"type": "unsubscribe", "product_ids": ["BTC-USD", "ETH-USD"], "channel": "level2"},
                     {"type": "subscribe", "product_ids": ["BTC-USD", "ETH-USD"], "channel": "level2"}]
    assert adapter.on_message(0, wire.l2("update", "BTC-USD", [("bid", "1", "1")]), 5) == []
    assert adapter.on_message(0, wire.l2("snapshot", "BTC-USD", SNAP), 6) == [Publish("BTCUSD")]
    assert adapter.syncs["ETHUSD"].state is State.SUBSCRIBING


def test_heartbeats_count_and_silence_reconnects(coinbase):
    adapter, wire = coinbase
    adapter.on_message(0, wire.msg("heartbeats", [{"current_time": "x", "heartbeat_counter": 1}]), 5 * NS)
    assert adapter.syncs["BTCUSD"].stats.keepalives == 1
    assert adapter.on_tick(16 * NS) == [Reconnect(0, "silent for 11 s")]


def test_products_are_split_across_connections():
    symbols = [f"C{i}-USD" for i in range(40)]
    adapter = CoinbaseAdapter(symbols)
    assert [len(c.symbols) for c in adapter.connections()] == [15, 15, 10]


def test_close_goes_stale(coinbase):
    adapter, _ = coinbase
    assert adapter.on_close(0, "1006") == [Stale("BTCUSD", "disconnect"), Stale("ETHUSD", "disconnect")]


@pytest.mark.parametrize("make", [
    lambda w: w.l2("update", "BTC-USD", [("ask", "1", "1")]),
    lambda w: w.l2("update", "SOL-USD", [("bid", "1", "1")]),
    lambda w: w.msg("l2_data", [{"type": "weird", "product_id": "BTC-USD", "updates": []}]),
    lambda w: b'{"type":"error","message":"too many L2 streams requested in a single session"}',
    lambda w: w.msg("ticker", []),
    lambda w: w.l2("update", "BTC-USD", [("bid", "1", "1")]) + b"trailing",
])
def test_malformed_raise(coinbase, make):
    adapter, wire = coinbase
    with pytest.raises(FeedProtocolError):
        adapter.on_message(0, make(wire), 4)
    assert adapter.syncs["BTCUSD"].state is State.LIVE


def test_crossed_update_resubscribes_that_product(coinbase):
    adapter, wire = coinbase
    actions = adapter.on_message(0, wire.l2("update", "BTC-USD", [("bid", "68005", "1")]), 4)
    assert Stale("BTCUSD", "crossed") in actions
    sends = [orjson.loads(a.text) for a in actions if isinstance(a, Send)]
    assert [s["product_ids"] for s in sends] == [["BTC-USD"], ["BTC-USD"]]
    assert adapter.syncs["ETHUSD"].state is State.LIVE


def test_duplicate_levels_in_one_update_last_wins(coinbase):
    adapter, wire = coinbase
    adapter.on_message(0, wire.l2("update", "BTC-USD", [("bid", "67000", "1"), ("bid", "67000", "0"),
                                                        ("offer", "70000", "0")]), 4)
    assert 6700000 not in [p for p, _ in adapter.books["BTCUSD"].levels(BID)]
