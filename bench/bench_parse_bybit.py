"""Bybit v5 orderbook.50: adapter on_message (u+1 chain, depth truncation) vs the floor and a cryptofeed-style book."""

import orjson

import feedbench
from observer.feeds.bybit import BybitAdapter

walk = feedbench.Walk(depth_max=50, tick_decimals=2, size_decimals=6)


def message(kind, bids, asks, u):
    return orjson.dumps({"topic": "orderbook.50.BTCUSDT", "type": kind, "ts": 1672304484978,
                         "data": {"s": "BTCUSDT", "b": bids, "a": asks, "u": u, "seq": 7961638724 + u},
                         "cts": 1672304484976})


SNAPSHOT = message("snapshot", walk.bids0[:50], walk.asks0[:50], 1000)
messages = []
for i in range(feedbench.MESSAGES):
    bids, asks = walk.step()
    messages.append(message("delta", bids, asks, 1001 + i))


def live():
    adapter = BybitAdapter(["BTCUSDT"], category="linear", depth=50)
    adapter.on_open(0, 0)
    adapter.on_message(0, SNAPSHOT, 1)
    return adapter


feedbench.report_against_peers("bench_parse_bybit", "observer BybitAdapter", live, feedbench.data_levels, messages)
