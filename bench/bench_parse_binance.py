"""Binance spot diff depth: adapter on_message vs the orjson floor and a cryptofeed-style book."""

import orjson

import feedbench
from observer.feeds.binance import BinanceAdapter

walk = feedbench.Walk(tick_decimals=2, size_decimals=8)
SNAPSHOT = orjson.dumps({"lastUpdateId": 1000, "bids": walk.bids0, "asks": walk.asks0})
messages = []
for i in range(feedbench.MESSAGES):
    bids, asks = walk.step()
    data = {"e": "depthUpdate", "E": 1700000000000 + i, "s": "BTCUSDT", "U": 1001 + 3 * i, "u": 1003 + 3 * i,
            "b": bids, "a": asks}
    messages.append(orjson.dumps({"stream": "btcusdt@depth@100ms", "data": data}))


def live():
    adapter = BinanceAdapter(["BTCUSDT"])
    adapter.on_open(0, 0)
    adapter.on_snapshot("BTCUSDT", 200, {}, SNAPSHOT, 1)
    return adapter


feedbench.report_against_peers("bench_parse_binance", "observer BinanceAdapter", live, feedbench.data_levels, messages)
