"""Kraken v2 book: the exact (decimal-preserving) parse approaches side by side, and the adapter.

Kraken v2 sends prices as JSON numbers whose literal text the checksum needs, so orjson alone
(the floor line) is not an option. Our way: one bytes regex quotes the `price`/`qty` numbers,
then orjson. The other exact way: `json.loads(parse_float=str)`. cryptofeed's: Decimal floats.
"""

import json
from decimal import Decimal

import feedbench
from observer.book import ASK, BID
from observer.book.fixed import render_fixed
from observer.feeds.kraken import KrakenAdapter, checksum, loads_exact

walk = feedbench.Walk(depth_max=10, tick_decimals=1, size_decimals=8)


def side_json(levels):
    return "[" + ",".join(f'{{"price":{p},"qty":{q}}}' for p, q in levels) + "]"


def message(kind, bids, asks):
    crc = checksum(walk.book)
    return (f'{{"channel":"book","type":"{kind}","data":[{{"symbol":"BTC/USD","bids":{side_json(bids)},'
            f'"asks":{side_json(asks)},"checksum":{crc},"timestamp":"2026-11-01T12:00:00.123456Z"}}]}}').encode()


def rendered(side):
    book = walk.book
    return [(render_fixed(p, book.price_exp), render_fixed(s, book.size_exp)) for p, s in book.levels(side)]


SNAPSHOT = message("snapshot", rendered(BID), rendered(ASK))
messages = []
for _ in range(feedbench.MESSAGES):
    bids, asks = walk.step()
    messages.append(message("update", bids, asks))


def live():
    adapter = KrakenAdapter(["BTC/USD"], depth=10)
    adapter.on_open(0, 0)
    adapter.on_message(0, SNAPSHOT, 1)
    return adapter


def parse_regex(msgs):
    for data in msgs:
        loads_exact(data)


def parse_json_str(msgs):
    for data in msgs:
        json.loads(data, parse_float=str)


def parse_json_decimal(msgs):
    for data in msgs:
        json.loads(data, parse_float=Decimal)


def levels(msg):
    element = msg["data"][0]
    for level in element["bids"]:
        yield 0, level["price"], level["qty"]
    for level in element["asks"]:
        yield 1, level["price"], level["qty"]


feedbench.report("bench_parse_kraken", [
    ("observer KrakenAdapter (+checksum)", feedbench.adapter_consumer(live)),
    ("orjson.loads only (floor, inexact)", feedbench.floor_consumer),
    ("parse: regex + orjson (ours)", parse_regex),
    ("parse: json.loads(parse_float=str)", parse_json_str),
    ("parse: json.loads(parse_float=Dec)", parse_json_decimal),
    ("orjson+Decimal+order-book (cf)", feedbench.cryptofeed_style(levels)),
], messages)
