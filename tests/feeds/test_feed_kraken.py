"""Kraken v2 adapter: the checksum on the v1 recording, the docs' worked example, transitions."""

import json

import orjson
import pytest

import feedrec
from observer.book import ASK, BID, Book, BookUpdate
from observer.feeds.actions import FeedProtocolError, Publish, Reconnect, Send, Stale
from observer.feeds.kraken import KrakenAdapter, checksum, loads_exact
from observer.feeds.sync import State

NS = 1_000_000_000

DOC_ASKS = [("45285.2", "0.00100000"), ("45286.4", "1.54571953"), ("45286.6", "1.54571109"),
            ("45289.6", "1.54560911"), ("45290.2", "0.15890660"), ("45291.8", "1.54553491"),
            ("45294.7", "0.04454749"), ("45296.1", "0.35380000"), ("45297.5", "0.09945542"),
            ("45299.5", "0.18772827")]
DOC_BIDS = [("45283.5", "0.10000000"), ("45283.4", "1.54582015"), ("45282.1", "0.10000000"),
            ("45281.0", "0.10000000"), ("45280.3", "1.54592586"), ("45279.0", "0.07990000"),
            ("45277.6", "0.03310103"), ("45277.5", "0.30000000"), ("45277.3", "1.54602737"),
            ("45276.6", "0.15445238")]


def v2_book(kind, symbol, bids, asks, crc, timestamp="2026-11-01T12:00:00.123456Z"):
    """A Kraken v2 book message with JSON NUMBERS written from the given literal texts."""
    def side(levels):
        return "[" + ",".join(f'{{"price":{p},"qty":{q}}}' for p, q in levels) + "]"
    return (f'{{"channel":"book","type":"{kind}","data":[{{"symbol":"{symbol}","bids":{side(bids)},'
            f'"asks":{side(asks)},"checksum":{crc},"timestamp":"{timestamp}"}}]}}').encode()


def ack(symbol):
    return orjson.dumps({"method": "subscribe", "result": {"channel": "book", "depth": 10,
                         "snapshot": True, "symbol": symbol}, "success": True,
                         "time_in": "x", "time_out": "y", "req_id": 1})


def crc_of(bids, asks):
    book = Book("t:X")
    book.apply(BookUpdate(True, bids, asks))
    return checksum(book)


def test_docs_worked_example():
    assert crc_of(DOC_BIDS, DOC_ASKS) == 3310070434
    adapter = KrakenAdapter(["BTC/USD"], paranoid=True)
    (send,) = adapter.on_open(0, 0)
    assert json.loads(send.text)["params"] == {"channel": "book", "symbol": ["BTC/USD"], "depth": 10,
                                               "snapshot": True}
    assert adapter.on_message(0, ack("BTC/USD"), 1) == []
    actions = adapter.on_message(0, v2_book("snapshot", "BTC/USD", DOC_BIDS, DOC_ASKS, 3310070434), 2)
    assert actions == [Publish("BTCUSD")]
    assert adapter.syncs["BTCUSD"].stats.checksums_ok == 1
    assert adapter.books["BTCUSD"].exch_ts_ns == 1793534400123456000


def test_number_literals_keep_their_text():
    msg = loads_exact(b'{"data":[{"price":45281.0,"qty":0.00100000,"n":1.5}],"price":1e-05}')
    assert msg["data"][0]["price"] == "45281.0"
    assert msg["data"][0]["qty"] == "0.00100000"
    assert msg["data"][0]["n"] == 1.5
    assert msg["price"] == "1e-05"


def v1_levels(obj, key):
    return [(level[0], level[1]) for level in obj.get(key, [])]


def test_checksum_verifies_on_every_v1_recorded_message():
    """Kraken v1 book-1000 frames through our Book: same checksum rule as v2, from the ints."""
    books = {}
    verified = 0
    for _, text in feedrec.frames("KRAKEN.ws.50.0"):
        msg = orjson.loads(text)
        if not isinstance(msg, list) or not str(msg[-2]).startswith("book-"):
            continue
        pair = msg[-1]
        objects = [part for part in msg[1:-2] if isinstance(part, dict)]
        if "as" in objects[0] or "bs" in objects[0]:
            book = books[pair] = Book(f"kraken:{pair}", depth_max=1000)
            book.apply(BookUpdate(True, v1_levels(objects[0], "bs"), v1_levels(objects[0], "as")))
            continue
        book = books[pair]
        for part in objects:
            book.apply_side(ASK, v1_levels(part, "a"))
            book.apply_side(BID, v1_levels(part, "b"))
        book.end_update(0, 0)
        assert checksum(book) == int(objects[-1]["c"]), (pair, verified)
        verified += 1
    assert verified == 4269


# ------------------------------------------------------------------------- synthetic

BIDS = [("100.0", "1.00"), ("99.5", "2.00")]
ASKS = [("100.5", "1.50"), ("101.0", "3.00")]


@pytest.fixture
def kraken():
    adapter = KrakenAdapter(["BTC/USD"], depth=10, paranoid=True)
    adapter.on_open(0, 0)
    adapter.on_message(0, ack("BTC/USD"), 1)
    actions = adapter.on_message(0, v2_book("snapshot", "BTC/USD", BIDS, ASKS, crc_of(BIDS, ASKS)), 2)
    assert actions == [Publish("BTCUSD")]
    return adapter


def test_update_in_wire_order_then_checksum(kraken):
    bids = [("99.8", "1.00"), ("99.8", "4.00")]  # the same price twice: the last wins
    expected = crc_of([("100.0", "1.00"), ("99.8", "4.00"), ("99.5", "2.00")], ASKS)
    assert kraken.on_message(0, v2_book("update", "BTC/USD", bids, [], expected), 3) == [Publish("BTCUSD")]
    assert kraken.books["BTCUSD"].levels(BID)[1] == (998, 400)


def test_truncates_to_depth_without_deletes():
    adapter = KrakenAdapter(["BTC/USD"], depth=10, paranoid=True)
    adapter.on_open(0, 0)
    bids = [(f"{100 - i}.0", "1.00") for i in range(10)]
    adapter.on_message(0, v2_book("snapshot", "BTC/USD", bids, ASKS, crc_of(bids, ASKS)), 1)
    insert = [("99.5", "1.00")]
    after = sorted(bids + insert, key=lambda level: -float(level[0]))[:10]
    actions = adapter.on_message(0, v2_book("update", "BTC/USD", insert, [], crc_of(after, ASKS)), 2)
    assert actions == [Publish("BTCUSD")]
    assert adapter.books["BTCUSD"].depth(BID) == 10


def test_checksum_mismatch_unsubscribes_then_subscribes(kraken):
    actions = kraken.on_message(0, v2_book("update", "BTC/USD", [("99.9", "1.00")], [], 12345), 3)
    assert Stale("BTCUSD", "checksum") in actions
    sends = [json.loads(a.text) for a in actions if isinstance(a, Send)]
    assert [s["method"] for s in sends] == ["unsubscribe", "subscribe"]
    sync = kraken.syncs["BTCUSD"]
    assert (sync.stats.checksum_errors, sync.state) == (1, State.SUBSCRIBING)
    # In-flight updates of the old subscription are dropped, not applied.
    assert kraken.on_message(0, v2_book("update", "BTC/USD", [("99.9", "2.00")], [], 1), 4) == []
    assert sync.stats.stale_dropped == 1
    kraken.on_message(0, ack("BTC/USD"), 5)
    actions = kraken.on_message(0, v2_book("snapshot", "BTC/USD", BIDS, ASKS, crc_of(BIDS, ASKS)), 6)
    assert actions == [Publish("BTCUSD")]


def test_crossed_update_resyncs(kraken):
    crossed = [("100.5", "1.00")]
    actions = kraken.on_message(0, v2_book("update", "BTC/USD", crossed, [], 0), 3)
    assert Stale("BTCUSD", "crossed") in actions


def test_bad_snapshot_checksum_never_publishes():
    adapter = KrakenAdapter(["BTC/USD"])
    adapter.on_open(0, 0)
    actions = adapter.on_message(0, v2_book("snapshot", "BTC/USD", BIDS, ASKS, 7), 1)
    assert not [a for a in actions if isinstance(a, Publish)]


def test_heartbeats_keep_alive_and_silence_reconnects(kraken):
    assert kraken.on_message(0, b'{"channel":"heartbeat"}', 5 * NS) == []
    assert kraken.on_tick(9 * NS) == []
    assert kraken.on_tick(16 * NS) == [Reconnect(0, "silent for 11 s")]


def test_refused_subscribe_is_retried(kraken):
    refusal = b'{"method":"subscribe","error":"Already subscribed","success":false,"symbol":"BTC/USD"}'
    with pytest.raises(FeedProtocolError):
        kraken.on_message(0, refusal, 3)
    assert [json.loads(a.text)["method"] for a in kraken.drain() if isinstance(a, Send)] == [
        "unsubscribe", "subscribe"]


@pytest.mark.parametrize("data", [b"[]", b'{"channel":"book","type":"update","data":[]}',
                                  b'{"channel":"book","type":"x","data":[{"symbol":"BTC/USD","bids":[],"asks":[],"checksum":1}]}',
                                  b'{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[{"price":"1"}],"asks":[],"checksum":1}]}',
                                  b'{"channel":"nope"}', b'{"channel":"heartbeat"} x'])
def test_malformed_raise(kraken, data):
    with pytest.raises(FeedProtocolError):
        kraken.on_message(0, data, 3)
    assert kraken.syncs["BTCUSD"].state is State.LIVE


def test_resync_storm_past_the_send_queue_reconnects_instead(kraken):
    kraken.limiter.queue_max = 4
    actions = []
    for i in range(12):  # 24 texts in the same instant: 10 go (the burst), the rest must wait
        actions += kraken.on_message(0, v2_book("update", "BTC/USD", [("99.9", "1.00")], [], 1), 3 + i)
        actions += kraken.on_message(0, ack("BTC/USD"), 3 + i)
        actions += kraken.on_message(0, v2_book("snapshot", "BTC/USD", BIDS, ASKS, crc_of(BIDS, ASKS)), 3 + i)
    assert any(isinstance(a, Reconnect) for a in actions)


def test_a_book_never_acked_is_asked_for_again():
    adapter = KrakenAdapter(["BTC/USD"])
    adapter.on_open(0, 0)
    adapter.on_message(0, b'{"channel":"heartbeat"}', 5 * NS)
    assert adapter.on_tick(6 * NS) == []
    adapter.on_message(0, b'{"channel":"heartbeat"}', 25 * NS)
    actions = adapter.on_tick(27 * NS)
    assert [json.loads(a.text)["method"] for a in actions if isinstance(a, Send)] == ["unsubscribe", "subscribe"]
    assert adapter.syncs["BTCUSD"].stats.sync_timeouts == 1
    assert not [a for a in actions if isinstance(a, Stale)]  # it was never live
