"""OKX books: adapter on_message (seqId chain; checksum 0 as sent since 2026-06, and the legacy
checksum verified on every message) against the orjson floor and a cryptofeed-style book."""

import orjson

import feedbench
from observer.book import ASK, BID
from observer.book.fixed import render_minimal
from observer.feeds.okx import OkxAdapter, checksum

walk = feedbench.Walk(depth_max=400, tick_decimals=1, size_decimals=4)


def levels_text(levels):
    return [[p.rstrip("0").rstrip(".") if "." in p else p, s.rstrip("0").rstrip(".") if "." in s else s, "0", "1"]
            for p, s in levels]


def message(action, bids, asks, seq, prev, legacy):
    data = {"asks": levels_text(asks), "bids": levels_text(bids), "ts": "1597026383085",
            "checksum": checksum(walk.book) if legacy else 0, "prevSeqId": prev, "seqId": seq}
    return orjson.dumps({"arg": {"channel": "books", "instId": "BTC-USDT"}, "action": action, "data": [data]})


def stored(side):
    book = walk.book
    return [(render_minimal(p, book.price_exp), render_minimal(s, book.size_exp)) for p, s in book.levels(side)]


SNAPSHOTS = {legacy: message("snapshot", stored(BID), stored(ASK), 100, -1, legacy) for legacy in (False, True)}
streams = {False: [], True: []}
for i in range(feedbench.MESSAGES):
    bids, asks = walk.step()
    for legacy in (False, True):
        streams[legacy].append(message("update", bids, asks, 107 + 7 * i, 100 + 7 * i, legacy))


def live(legacy):
    def make():
        adapter = OkxAdapter(["BTC-USDT"])
        adapter.on_open(0, 0)
        adapter.on_message(0, SNAPSHOTS[legacy], 1)
        return adapter
    return make


def levels(msg):
    data = msg["data"][0]
    for level in data["bids"]:
        yield 0, level[0], level[1]
    for level in data["asks"]:
        yield 1, level[0], level[1]


feedbench.report("bench_parse_okx", [
    ("observer OkxAdapter (checksum 0)", feedbench.adapter_consumer(live(False))),
    ("observer OkxAdapter (legacy crc)", lambda msgs: feedbench.adapter_consumer(live(True))(streams[True])),
    ("orjson.loads only (floor)", feedbench.floor_consumer),
    ("orjson+Decimal+order-book (cf)", feedbench.cryptofeed_style(levels)),
], streams[False])
