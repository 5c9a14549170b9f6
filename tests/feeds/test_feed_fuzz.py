"""Property: whatever bytes arrive, an adapter returns actions or raises FeedProtocolError.

Nothing else may escape (no KeyError, TypeError, IndexError, RecursionError...), and the books
keep their invariants. Three seeded generators per adapter: random bytes, valid messages with
random byte mutations, and valid JSON of random shape in the places the adapter reads.
"""

import json
import random

import orjson
import pytest

from observer.feeds.actions import FeedProtocolError
from observer.feeds.binance import BinanceAdapter
from observer.feeds.binance_futures import BinanceFuturesAdapter
from observer.feeds.bybit import BybitAdapter
from observer.feeds.coinbase import CoinbaseAdapter
from observer.feeds.kraken import KrakenAdapter, checksum as kraken_checksum
from observer.feeds.okx import OkxAdapter

SEED = 20261122
CASES = 400


def binance(cls, pu):
    adapter = cls(["BTCUSDT"], paranoid=True)
    adapter.on_open(0, 0)
    snapshot = orjson.dumps({"lastUpdateId": 10, "bids": [["100.0", "1"]], "asks": [["101.0", "1"]]})
    adapter.on_snapshot("BTCUSDT", 200, {}, snapshot, 1)
    data = {"e": "depthUpdate", "E": 1, "s": "BTCUSDT", "U": 11, "u": 12, "b": [["99.5", "2"]], "a": [["101.5", "0"]]}
    if pu:
        data.update(U=9, pu=8)
    return adapter, [orjson.dumps({"stream": "btcusdt@depth@100ms", "data": data})]


def kraken():
    adapter = KrakenAdapter(["BTC/USD"], paranoid=True)
    adapter.on_open(0, 0)
    snap = (b'{"channel":"book","type":"snapshot","data":[{"symbol":"BTC/USD","bids":[{"price":100.0,"qty":1.5}],'
            b'"asks":[{"price":101.0,"qty":2.5}],"checksum":%d,"timestamp":"2026-11-01T12:00:00.1Z"}]}')
    adapter.on_message(0, snap % 0, 1)  # wrong checksum: resubscribes; then a right one
    adapter.on_message(0, snap % kraken_checksum(_book_of(adapter, "BTCUSD", [("100.0", "1.5")], [("101.0", "2.5")])), 2)
    update = (b'{"channel":"book","type":"update","data":[{"symbol":"BTC/USD","bids":[{"price":99.5,"qty":1.0}],'
              b'"asks":[],"checksum":1,"timestamp":"2026-11-01T12:00:00.2Z"}]}')
    return adapter, [update, b'{"channel":"heartbeat"}', b'{"method":"subscribe","result":{"symbol":"BTC/USD"},"success":true}']


def _book_of(adapter, symbol, bids, asks):
    from observer.book import Book, BookUpdate

    book = Book("t:X")
    book.apply(BookUpdate(True, bids, asks))
    return book


def okx():
    adapter = OkxAdapter(["BTC-USDT"], paranoid=True)
    adapter.on_open(0, 0)
    def books(action, seq, prev):
        data = {"asks": [["101", "1", "0", "1"]], "bids": [["100", "1", "0", "1"]], "ts": "1", "checksum": 0,
                "seqId": seq, "prevSeqId": prev}
        return orjson.dumps({"arg": {"channel": "books", "instId": "BTC-USDT"}, "action": action, "data": [data]})
    adapter.on_message(0, books("snapshot", 5, -1), 1)
    return adapter, [books("update", 6, 5), b'{"event":"subscribe","arg":{"channel":"books","instId":"BTC-USDT"}}', b"pong"]


def bybit():
    adapter = BybitAdapter(["BTCUSDT"], paranoid=True)
    adapter.on_open(0, 0)
    def ob(kind, u):
        return orjson.dumps({"topic": "orderbook.50.BTCUSDT", "type": kind, "ts": 1,
                             "data": {"s": "BTCUSDT", "b": [["100", "1"]], "a": [["101", "1"]], "u": u, "seq": 1}})
    adapter.on_message(0, ob("snapshot", 5), 1)
    return adapter, [ob("delta", 6), b'{"success":true,"ret_msg":"pong","op":"ping"}']


def coinbase():
    adapter = CoinbaseAdapter(["BTC-USD"], paranoid=True)
    adapter.on_open(0, 0)
    def l2(kind, seq):
        updates = [{"side": "bid", "event_time": "2026-11-01T12:00:00Z", "price_level": "100", "new_quantity": "1"},
                   {"side": "offer", "event_time": "2026-11-01T12:00:00Z", "price_level": "101", "new_quantity": "1"}]
        return orjson.dumps({"channel": "l2_data", "client_id": "", "timestamp": "t", "sequence_num": seq,
                             "events": [{"type": kind, "product_id": "BTC-USD", "updates": updates}]})
    adapter.on_message(0, l2("snapshot", 0), 1)
    return adapter, [l2("update", 1), orjson.dumps({"channel": "heartbeats", "sequence_num": 2, "events": [{}]})]


ADAPTERS = {
    "binance": lambda: binance(BinanceAdapter, False),
    "binance-futures": lambda: binance(BinanceFuturesAdapter, True),
    "kraken": kraken,
    "okx": okx,
    "bybit": bybit,
    "coinbase": coinbase,
}


def random_bytes(rng, valid):
    return bytes(rng.randrange(256) for _ in range(rng.randrange(200)))


def mutated(rng, valid):
    data = bytearray(rng.choice(valid))
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(4)
        at = rng.randrange(len(data) + 1)
        if kind == 0 and data:
            data[min(at, len(data) - 1)] = rng.randrange(256)
        elif kind == 1:
            data[at:at] = bytes([rng.choice(b'{}[]",:0123456789.-eE ')])
        elif kind == 2 and data:
            del data[min(at, len(data) - 1)]
        else:
            data = data[:at]
    return bytes(data)


JUNK = [None, True, 0, -1, 2**70, 1.5, "", "x", "1e999", "-1", [], [[]], [["1"]], {}, {"a": 1}, "ÿ" * 3]


def reshaped(rng, valid):
    """Valid JSON with one value somewhere replaced by junk of another type."""
    data = rng.choice(valid)
    if data in (b"pong",):
        return data
    msg = orjson.loads(data)
    node = msg
    for _ in range(rng.randint(1, 4)):
        if isinstance(node, dict) and node:
            key = rng.choice(list(node))
            if rng.random() < 0.5 or not isinstance(node[key], (dict, list)) or not node[key]:
                node[key] = rng.choice(JUNK)
                break
            node = node[key]
        elif isinstance(node, list) and node:
            index = rng.randrange(len(node))
            if rng.random() < 0.5 or not isinstance(node[index], (dict, list)) or not node[index]:
                node[index] = rng.choice(JUNK)
                break
            node = node[index]
        else:
            break
    return json.dumps(msg).encode()  # stdlib: it writes integers past 64 bits too


@pytest.mark.parametrize("generator", [random_bytes, mutated, reshaped])
@pytest.mark.parametrize("exchange", sorted(ADAPTERS))
def test_any_input_yields_actions_or_feed_protocol_error(exchange, generator):
    rng = random.Random(f"{SEED}-{exchange}-{generator.__name__}")
    adapter, valid = ADAPTERS[exchange]()
    outcomes = {"actions": 0, "errors": 0}
    for case in range(CASES):
        data = generator(rng, valid)
        try:
            actions = adapter.on_message(0, data, 10 + case)
        except FeedProtocolError:
            outcomes["errors"] += 1
            adapter.drain()
        else:
            assert isinstance(actions, list)
            outcomes["actions"] += 1
        for book in adapter.books.values():
            book.check()
    assert outcomes["errors"] > 0
    # The adapter still works: a reconnect brings it back to a fresh subscription.
    adapter.on_close(0, "fuzz")
    assert adapter.on_open(0, 10**12) is not None
