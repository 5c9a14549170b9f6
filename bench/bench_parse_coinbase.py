"""Coinbase level2: adapter on_message (per-connection sequence_num, offer side) vs the floor and a cryptofeed-style book."""

import orjson

import feedbench
from observer.feeds.coinbase import CoinbaseAdapter

walk = feedbench.Walk(tick_decimals=2, size_decimals=8)
SIDE = ("bid", "offer")


def message(kind, bids, asks, seq):
    updates = [{"side": SIDE[side], "event_time": "2026-11-01T12:00:00.120Z", "price_level": p, "new_quantity": q}
               for side, levels in ((0, bids), (1, asks)) for p, q in levels]
    return orjson.dumps({"channel": "l2_data", "client_id": "", "timestamp": "2026-11-01T12:00:00.123456789Z",
                         "sequence_num": seq, "events": [{"type": kind, "product_id": "BTC-USD", "updates": updates}]})


SNAPSHOT = message("snapshot", walk.bids0, walk.asks0, 0)
messages = []
for i in range(feedbench.MESSAGES):
    bids, asks = walk.step()
    messages.append(message("update", bids, asks, 1 + i))


def live():
    adapter = CoinbaseAdapter(["BTC-USD"])
    adapter.on_open(0, 0)
    adapter.on_message(0, SNAPSHOT, 1)
    return adapter


def levels(msg):
    for update in msg["events"][0]["updates"]:
        yield (0 if update["side"] == "bid" else 1), update["price_level"], update["new_quantity"]


feedbench.report_against_peers("bench_parse_coinbase", "observer CoinbaseAdapter", live, levels,
                               messages)
