"""OKX books adapter: legacy checksums on the recording, doc examples, the seqId chain."""

import orjson
import pytest

import feedrec
from observer.book import Book, BookUpdate
from observer.feeds.actions import FeedProtocolError, Publish, Reconnect, Send, Stale
from observer.feeds.okx import OkxAdapter, checksum
from observer.feeds.sync import State

NS = 1_000_000_000


def test_doc_checksum_examples():
    book = Book("t:X")
    book.apply(BookUpdate(True, [("3366.1", "7"), ("3366", "6")], [("3366.8", "9"), ("3368", "8")]))
    assert checksum(book) == -1881014294
    book.apply(BookUpdate(True, [("3366.1", "7")], [("3366.8", "9"), ("3368", "8"), ("3372", "8")]))
    assert checksum(book) == 831078360


def test_recording_checksums_verify_from_the_stored_book():
    natives = ["BTC-USD-220527", "UNI-USD-SWAP", "BTC-USDT"]
    adapter = OkxAdapter(natives, paranoid=True)
    adapter.on_open(0, 0)
    messages = 0
    for ts, text in feedrec.frames("OKX.ws.1.0"):
        if '"channel":"books"' not in text:
            continue
        for action in adapter.on_message(0, text.encode(), int(ts * NS)):
            assert not isinstance(action, (Stale, Reconnect)), action
        messages += 1
    checked = sum(sync.stats.checksums_ok for sync in adapter.syncs.values())
    assert checked == 290
    for sync in adapter.syncs.values():
        assert sync.state is State.LIVE
        assert sync.stats.checksum_errors == 0


def books(action, inst, bids=(), asks=(), seq=None, prev=None, crc=0):
    data = {"asks": [[p, s, "0", "1"] for p, s in asks], "bids": [[p, s, "0", "1"] for p, s in bids],
            "ts": "1597026383085", "checksum": crc}
    if seq is not None:
        data["seqId"] = seq
        data["prevSeqId"] = prev
    return orjson.dumps({"arg": {"channel": "books", "instId": inst}, "action": action, "data": [data]})


@pytest.fixture
def okx():
    adapter = OkxAdapter(["BTC-USDT"], paranoid=True)
    (send,) = adapter.on_open(0, 0)
    assert orjson.loads(send.text) == {"op": "subscribe", "args": [{"channel": "books", "instId": "BTC-USDT"}]}
    adapter.on_message(0, b'{"event":"subscribe","arg":{"channel":"books","instId":"BTC-USDT"},"connId":"a"}', 1)
    actions = adapter.on_message(0, books("snapshot", "BTC-USDT", [("100", "1")], [("101", "1")], 10, -1), 2)
    assert actions == [Publish("BTCUSDT")]
    return adapter


def test_doc_chain_with_keepalive_and_maintenance_reset(okx):
    assert okx.on_message(0, books("update", "BTC-USDT", [("100.5", "2")], [], 15, 10), 3) == [Publish("BTCUSDT")]
    assert okx.on_message(0, books("update", "BTC-USDT", [], [], 15, 15), 4) == []
    assert okx.on_message(0, books("update", "BTC-USDT", [], [("101", "0")], 3, 15), 5) == [Publish("BTCUSDT")]
    assert okx.on_message(0, books("update", "BTC-USDT", [("99", "1")], [], 5, 3), 6) == [Publish("BTCUSDT")]
    stats = okx.syncs["BTCUSDT"].stats
    assert (stats.gaps, stats.keepalives, stats.resets) == (0, 1, 1)


def test_broken_chain_resubscribes(okx):
    actions = okx.on_message(0, books("update", "BTC-USDT", [("100.5", "2")], [], 20, 12), 3)
    assert Stale("BTCUSDT", "gap") in actions
    ops = [orjson.loads(a.text)["op"] for a in actions if isinstance(a, Send)]
    assert ops == ["unsubscribe", "subscribe"]
    assert okx.syncs["BTCUSDT"].state is State.SUBSCRIBING
    assert okx.on_message(0, books("update", "BTC-USDT", [("1", "2")], [], 21, 20), 4) == []
    assert okx.on_message(0, books("snapshot", "BTC-USDT", [("100", "1")], [("101", "1")], 30, -1), 5) == [
        Publish("BTCUSDT")]


def test_nonzero_checksum_mismatch_resubscribes(okx):
    actions = okx.on_message(0, books("update", "BTC-USDT", [("100.5", "2")], [], 11, 10, crc=5), 3)
    assert Stale("BTCUSDT", "checksum") in actions
    assert okx.syncs["BTCUSDT"].stats.checksum_errors == 1


def test_text_ping_when_idle_and_reconnect_when_silent(okx):
    assert okx.on_tick(15 * NS) == []
    assert okx.on_tick(21 * NS) == [Send(0, "ping")]
    assert okx.on_message(0, b"pong", 22 * NS) == []
    assert okx.on_tick(63 * NS) == [Reconnect(0, "silent for 41 s")]


@pytest.mark.parametrize("data", [b"ping", b"{}", b'{"event":"error","code":"60012","msg":"bad"}',
                                  b'{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[]}',
                                  books("update", "BTC-USDT", [], [], "11", 10),
                                  books("update", "BTC-USDT", [], [], 11, 10) + b"{}"])
def test_malformed_raise(okx, data):
    with pytest.raises(FeedProtocolError):
        okx.on_message(0, data, 3)
    assert okx.syncs["BTCUSDT"].state is State.LIVE


def test_crossed_update_resubscribes(okx):
    actions = okx.on_message(0, books("update", "BTC-USDT", [("101.5", "1")], [], 11, 10), 3)
    assert Stale("BTCUSDT", "crossed") in actions
    assert [orjson.loads(a.text)["op"] for a in actions if isinstance(a, Send)] == ["unsubscribe", "subscribe"]


def test_duplicate_levels_and_unknown_deletes(okx):
    message = books("update", "BTC-USDT", [("99", "1"), ("99", "3"), ("98", "0")], [("105", "0")], 11, 10)
    assert okx.on_message(0, message, 3) == [Publish("BTCUSDT")]
    assert okx.books["BTCUSDT"].levels(0) == [(100, 1), (99, 3)]


def test_past_the_op_budget_a_resync_reconnects(okx):
    okx.ops_on_conn[0] = 469
    actions = okx.on_message(0, books("update", "BTC-USDT", [("100.5", "2")], [], 20, 12), 3)
    assert Reconnect(0, "470 subscribe ops on this connection") in actions
    assert not [a for a in actions if isinstance(a, Send)]
    okx.on_close(0, "reconnect")
    (send,) = okx.on_open(0, 4)
    assert orjson.loads(send.text)["op"] == "subscribe"
    assert okx.ops_on_conn[0] == 1


def test_informational_events_are_accepted(okx):
    for text in (b'{"event":"channel-conn-count","channel":"books","connCount":"2","connId":"a"}',
                 b'{"event":"notice","code":"64008","msg":"upgrade in 30 s","connId":"a"}',
                 b'{"event":"unsubscribe","arg":{"channel":"books","instId":"BTC-USDT"},"connId":"a"}'):
        assert okx.on_message(0, text, 3) == []
