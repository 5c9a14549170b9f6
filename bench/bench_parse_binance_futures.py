"""Binance USD-M futures depth (pu chain): adapter on_message vs the floor and a cryptofeed-style book."""

import orjson

import feedbench
from observer.feeds.binance_futures import BinanceFuturesAdapter

walk = feedbench.Walk(tick_decimals=1, size_decimals=3)
SNAPSHOT = orjson.dumps({"lastUpdateId": 1000, "E": 1, "T": 1, "bids": walk.bids0, "asks": walk.asks0})
messages = []
last = 993  # the first event spans lastUpdateId 1000
for i in range(feedbench.MESSAGES):
    bids, asks = walk.step()
    first = last + 7  # ids are not contiguous on futures
    data = {"e": "depthUpdate", "E": 1700000000000 + i, "T": 1700000000000 + i, "s": "BTCUSDT", "U": first,
            "u": first + 5, "pu": last, "b": bids, "a": asks}
    last = first + 5
    messages.append(orjson.dumps({"stream": "btcusdt@depth@100ms", "data": data}))


def live():
    adapter = BinanceFuturesAdapter(["BTCUSDT"])
    adapter.on_open(0, 0)
    adapter.on_snapshot("BTCUSDT", 200, {}, SNAPSHOT, 1)
    return adapter


feedbench.report_against_peers("bench_parse_binance_futures", "observer BinanceFuturesAdapter", live, feedbench.data_levels, messages)
