"""Bybit v5 orderbook adapter: snapshot/delta, u continuity, u == 1 reset, re-push, ping."""

import orjson
import pytest

from observer.book import ASK, BID
from observer.feeds.actions import FeedProtocolError, Publish, Reconnect, Send, Stale
from observer.feeds.bybit import BybitAdapter
from observer.feeds.sync import State

NS = 1_000_000_000


def ob(kind, u, bids=(), asks=(), symbol="BTCUSDT", depth=50):
    return orjson.dumps({"topic": f"orderbook.{depth}.{symbol}", "ts": 1672304484978, "type": kind,
                         "data": {"s": symbol, "b": [list(b) for b in bids], "a": [list(a) for a in asks],
                                  "u": u, "seq": 7961638724}, "cts": 1672304484976})


@pytest.fixture
def bybit():
    adapter = BybitAdapter(["BTCUSDT"], category="linear", depth=50, paranoid=True)
    (conn,) = adapter.connections()
    assert conn.url == "wss://stream.bybit.com/v5/public/linear"
    (send,) = adapter.on_open(0, 0)
    request = orjson.loads(send.text)
    assert request["op"] == "subscribe" and request["args"] == ["orderbook.50.BTCUSDT"]
    ack = {"success": True, "ret_msg": "", "conn_id": "c", "req_id": request["req_id"], "op": "subscribe"}
    assert adapter.on_message(0, orjson.dumps(ack), 1) == []
    assert adapter.syncs["BTCUSDT"].state is State.AWAITING_SNAPSHOT
    actions = adapter.on_message(0, ob("snapshot", 100, [("16493.50", "0.006")], [("16611.00", "0.029")]), 2)
    assert actions == [Publish("BTCUSDT")]
    return adapter


def test_deltas_continue_by_u(bybit):
    assert bybit.on_message(0, ob("delta", 101, [("16493.50", "0")], [("16600.00", "1")]), 3) == [Publish("BTCUSDT")]
    assert bybit.books["BTCUSDT"].levels(BID) == []
    assert bybit.books["BTCUSDT"].levels(ASK)[0] == (1660000, 1000)
    assert bybit.on_message(0, ob("delta", 101, [("1", "1")]), 4) == []  # stale re-delivery
    assert bybit.syncs["BTCUSDT"].stats.stale_dropped == 1


def test_gap_unsubscribes_then_subscribes(bybit):
    actions = bybit.on_message(0, ob("delta", 105, [("16490", "1")]), 3)
    assert Stale("BTCUSDT", "gap") in actions
    assert [orjson.loads(a.text)["op"] for a in actions if isinstance(a, Send)] == ["unsubscribe", "subscribe"]
    assert bybit.on_message(0, ob("delta", 106, [("16490", "1")]), 4) == []
    assert bybit.on_message(0, ob("snapshot", 200, [("16490", "1")], [("16500", "1")]), 5) == [Publish("BTCUSDT")]


def test_u_equal_one_is_a_restart_with_full_data(bybit):
    actions = bybit.on_message(0, ob("delta", 1, [("100", "1")], [("200", "1")]), 3)
    assert actions == [Publish("BTCUSDT")]
    book = bybit.books["BTCUSDT"]
    assert (book.best()[0], book.depth(BID), book.update_id) == (10000, 1, 1)
    assert bybit.syncs["BTCUSDT"].stats.resets == 1


def test_level1_repush_with_same_u_replaces():
    adapter = BybitAdapter(["BTCUSDT"], depth=1, paranoid=True)
    adapter.on_open(0, 0)
    assert adapter.on_message(0, ob("snapshot", 7, [("10", "1")], [("11", "1")], depth=1), 1) == [Publish("BTCUSDT")]
    assert adapter.on_message(0, ob("snapshot", 7, [("10", "1")], [("11", "1")], depth=1), 2) == [Publish("BTCUSDT")]
    assert adapter.on_message(0, ob("snapshot", 8, [("10", "2"), ("9", "1")], [("11", "1")], depth=1), 3)
    assert adapter.books["BTCUSDT"].depth(BID) == 1  # truncated to the subscribed depth
    assert adapter.syncs["BTCUSDT"].stats.gaps == 0


def test_spot_subscribe_is_chunked_to_ten_args():
    symbols = [f"C{i}USDT" for i in range(23)]
    adapter = BybitAdapter(symbols, category="spot", depth=50)
    sends = adapter.on_open(0, 0)
    assert [len(orjson.loads(s.text)["args"]) for s in sends if isinstance(s, Send)] == [10, 10, 3]


def test_refused_subscribe_retries(bybit):
    adapter = BybitAdapter(["ETHUSDT"])
    (send,) = adapter.on_open(0, 0)
    refusal = {"success": False, "ret_msg": "error:handler not found", "req_id": orjson.loads(send.text)["req_id"],
               "op": "subscribe"}
    with pytest.raises(FeedProtocolError):
        adapter.on_message(0, orjson.dumps(refusal), 1)
    assert [orjson.loads(a.text)["op"] for a in adapter.drain() if isinstance(a, Send)] == ["unsubscribe", "subscribe"]


def test_ping_when_idle(bybit):
    assert bybit.on_tick(10 * NS) == []
    (ping,) = bybit.on_tick(21 * NS)
    assert orjson.loads(ping.text)["op"] == "ping"
    assert bybit.on_message(0, b'{"success":true,"ret_msg":"pong","conn_id":"c","op":"ping"}', 22 * NS) == []
    assert bybit.on_tick(70 * NS) == [Reconnect(0, "silent for 48 s")]


def test_key_order_does_not_matter(bybit):
    text = (b'{"ts":1,"data":{"u":101,"seq":2,"a":[],"b":[["16493.50","1"]],"s":"BTCUSDT"},'
            b'"type":"delta","topic":"orderbook.50.BTCUSDT"}')
    assert bybit.on_message(0, text, 3) == [Publish("BTCUSDT")]


@pytest.mark.parametrize("data", [b"{}", b"[]", ob("delta", "102"), ob("delta", 102, symbol="ETHUSDT"),
                                  ob("bogus", 102), ob("delta", 102, depth=200), ob("delta", 102) + b" ]"])
def test_malformed_raise(bybit, data):
    with pytest.raises(FeedProtocolError):
        bybit.on_message(0, data, 3)
    assert bybit.syncs["BTCUSDT"].state is State.LIVE


def test_crossed_delta_resubscribes(bybit):
    actions = bybit.on_message(0, ob("delta", 101, [("16700", "1")]), 3)
    assert Stale("BTCUSDT", "crossed") in actions
    assert [orjson.loads(a.text)["op"] for a in actions if isinstance(a, Send)] == ["unsubscribe", "subscribe"]


def test_deltas_before_any_snapshot_are_dropped():
    adapter = BybitAdapter(["BTCUSDT"])
    adapter.on_open(0, 0)
    assert adapter.on_message(0, ob("delta", 5, [("1", "1")]), 1) == []
    assert adapter.syncs["BTCUSDT"].stats.stale_dropped == 1
