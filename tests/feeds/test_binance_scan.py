"""Binance spot's scanned hot path (observer/feeds/_binance_c.c + Book.apply_text_diff) against
its reference, the parsed path (orjson + Book.apply): two adapters get the same messages, one
with `scan` and one without, and after every message their actions, errors, counters and
every level of every book must be the same. Streams: the real recording, obsim's Binance venue
(random sizes, 1000-level books), and the same messages broken or reshaped in ways the scanner
must either read exactly as orjson does or hand back to the parsed path.
"""

import random

import orjson
import pytest

import feedrec
from observer.book import ASK, BID
from observer.book import book as book_module
from observer.feeds.actions import FeedProtocolError, FetchSnapshot
from observer.feeds.binance import BinanceAdapter, scan_diff
from observer.feeds.binance_futures import BinanceFuturesAdapter
from obsim import cli as sim_cli
from observer.feeds.actions import CatchUp
from obsim.binance import BinanceSpot

NS = 1_000_000_000

pytestmark = pytest.mark.skipif(scan_diff is None or not book_module.COMPILED,
                                reason="observer.feeds._binance_c is not built (no compiler)")


class Twins:
    """A scanning adapter and a parsing one, fed alike and compared after each input."""

    def __init__(self, symbols):
        self.fast = BinanceAdapter(symbols, depth=10)
        self.ref = BinanceAdapter(symbols, depth=10)
        assert self.fast.scan is scan_diff
        self.ref.scan = None
        self.scanned = 0          # messages the scanned path took whole
        taken = self.fast.on_scanned_depth

        def counted(*args):
            done = taken(*args)
            self.scanned += done
            return done
        self.fast.on_scanned_depth = counted
        for adapter in (self.fast, self.ref):
            adapter.scheduler.inflight_max = len(symbols)
        self.both(lambda a: a.on_open(0, 1))

    def both(self, call):
        outcomes = []
        for adapter in (self.fast, self.ref):
            try:
                outcomes.append(("ok", caught_up(adapter, call(adapter))))
            except FeedProtocolError as exc:
                outcomes.append(("error", str(exc), adapter.drain()))
        assert outcomes[0] == outcomes[1]
        self.compare()
        return outcomes[0]

    def message(self, data, recv_ns=2):
        return self.both(lambda a: a.on_message(0, data, recv_ns))

    def snapshot(self, symbol, body):
        return self.both(lambda a: a.on_snapshot(symbol, 200, {}, body, 2))

    def compare(self):
        for symbol, book in self.fast.books.items():
            ref = self.ref.books[symbol]
            assert book.levels(BID) == ref.levels(BID), symbol
            assert book.levels(ASK) == ref.levels(ASK), symbol
            assert (book.update_id, book.exch_ts_ns, book.updates, book.price_exp,
                    book.size_exp) == (ref.update_id, ref.exch_ts_ns, ref.updates,
                                       ref.price_exp, ref.size_exp)
            a, b = self.fast.syncs[symbol], self.ref.syncs[symbol]
            assert (a.state, a.bridged, vars_of(a.stats)) == (b.state, b.bridged, vars_of(b.stats))
        assert self.fast.protocol_errors == self.ref.protocol_errors


def caught_up(adapter, actions):
    """The actions, with every CatchUp (a backlog applied a chunk a turn) run to its end, as
    the session does between turns."""
    out = []
    while actions:
        action = actions.pop(0)
        if type(action) is CatchUp:
            actions.extend(adapter.on_catch_up(action.symbol, 2))
        else:
            out.append(action)
    return out


def vars_of(stats):
    return {name: getattr(stats, name) for name in stats.__slots__} if hasattr(
        stats, "__slots__") else dict(vars(stats))


def test_recording_takes_the_scanned_path_with_the_same_books():
    frames = [(ts, text) for ts, text in feedrec.frames("BINANCE.ws.1.0") if "@depth" in text[:60]]
    replies = {}
    for url, ts, body in feedrec.http_replies("BINANCE.http.0.0"):
        replies[url.split("symbol=")[1].split("&")[0]] = (ts, body)
    twins = Twins(list(replies))
    for ts, text in frames:
        for symbol, (reply_ts, body) in list(replies.items()):
            if reply_ts <= ts:
                del replies[symbol]
                twins.snapshot(symbol, body.encode())
        twins.message(text.encode(), int(ts * NS))
    assert twins.scanned > len(frames) // 2    # the recording's live diffs went the fast way


class ObsimStream:
    """obsim's Binance venue, ticked on demand: 1000-level books, random sizes, 10 changes per
    diff; a snapshot is the venue's book at the time it is asked for (as REST would be)."""

    def __init__(self, symbols, seed):
        opts = sim_cli.parser().parse_args(["--exchanges", "binance", "--depth", "1000",
                                            "--seed", str(seed), "--changes-per-event", "10",
                                            "--rate", "400"])
        self.venue = BinanceSpot(opts, symbols, None)
        self.state = {"micros": False, "combined": True}
        self.payloads = []
        for symbol, market in self.venue.markets.items():
            market.state["subs"][self] = [f"{symbol.lower()}@depth@100ms"]
        self.now_s = 0.0

    def send(self, frame, payload=None):
        self.payloads.append(payload)

    def snapshot(self, symbol):
        return self.venue.snapshot_body(self.venue.markets[symbol], 1000)

    def diffs(self, messages):
        for _ in range(messages):
            while not self.payloads:
                self.venue.tick(self.now_s, 0.005)
                self.now_s += 0.005
            yield self.payloads.pop(0)


def live_twins(symbols, stream):
    twins = Twins(symbols)
    for symbol in symbols:
        twins.snapshot(symbol, stream.snapshot(symbol))
    return twins


def test_obsim_stream_takes_the_scanned_path_with_the_same_books():
    symbols = ["BTCUSDT", "ETHUSDT"]
    stream = ObsimStream(symbols, seed=11)
    twins = live_twins(symbols, stream)
    for payload in stream.diffs(600):
        twins.message(payload)
    assert twins.scanned == 600 - len(symbols)  # all but each book's bridging diff
    assert all(book.depth(BID) > 500 for book in twins.fast.books.values())


def reshaped(payload, rng):
    """The same diff, or a broken one, in one of the ways the scanner must get right."""
    msg = orjson.loads(payload)
    data = msg["data"]
    text = payload.decode()
    if rng.random() < 0.7:
        return payload  # as sent
    kind = rng.randrange(20)
    if kind == 0:     # whitespace everywhere JSON allows it
        return orjson.dumps(msg, option=orjson.OPT_INDENT_2)
    if kind == 1:     # keys in another order, data before stream
        return orjson.dumps({"data": dict(reversed(list(data.items()))), "stream": msg["stream"]})
    if kind == 2:     # a raw stream: the payload alone
        return orjson.dumps(data)
    if kind == 3:     # a repeated key (orjson keeps the last)
        return text.replace('"U":', '"U":1,"U":', 1).encode()
    if kind == 4:     # a float id
        return text.replace(f'"u":{data["u"]}', f'"u":{data["u"]}.0', 1).encode()
    if kind == 5:     # a finer size: the book rescales (the parsed path's business)
        if data["b"]:
            data["b"][0][1] += "1"
        return orjson.dumps(msg)
    if kind == 6:     # an escape in a level text
        return text.replace('"b":[["', '"b":[["\\u0031', 1).encode()
    if kind == 7:     # cut short
        return payload[: rng.randrange(1, len(payload))]
    if kind == 8:     # another event kind
        return text.replace("depthUpdate", "depthUpdatf").encode()
    if kind == 9:     # an unknown symbol
        return text.replace(f'"s":"{data["s"]}"', '"s":"NOPEUSDT"').encode()
    if kind == 10:    # extra payload keys, scalar and nested
        data["x"] = "y"
        data["T"] = 5
        if rng.random() < 0.5:
            data["z"] = [1, {"k": None}]
        return orjson.dumps(msg)
    if kind == 11:    # a level with a third item (the parsed path ignores it)
        if data["a"]:
            data["a"][0].append("7")
        return orjson.dumps(msg)
    if kind == 12:    # a negative size, a sign, an exponent
        if data["a"]:
            data["a"][0][1] = rng.choice(["-1", "+1", "1e3", "", ".", "1.2.3", "01"])
        return orjson.dumps(msg)
    if kind == 13:    # U > u
        return text.replace(f'"U":{data["U"]}', f'"U":{data["u"] + 1}', 1).encode()
    if kind == 14:    # trailing garbage
        return payload + rng.choice([b" ", b"\n", b"x", b"}", b"{}"])
    if kind == 15:    # a missing field
        del data[rng.choice(["E", "s", "U", "u", "b", "a", "e"])]
        return orjson.dumps(msg)
    if kind == 16:    # b not a list of pairs
        data["b"] = rng.choice([{}, "x", [["1"]], [[1, 2]], [["1", "2", "3"]], [[]], None])
        return orjson.dumps(msg)
    if kind == 17:    # a huge id, a leading zero
        return text.replace(f'"E":{data["E"]}', rng.choice(['"E":99999999999999999999',
                                                            '"E":0123', '"E":-5'])).encode()
    if kind == 18:    # non-ASCII in the stream name
        return text.replace('"stream":"', '"stream":"\u00e9', 1).encode()
    if kind == 19:    # a book crossed by the diff
        best_ask = data["a"][0][0] if data["a"] else None
        if best_ask:
            data["b"] = [[str(float(best_ask) * 2), "1.0"]]
        return orjson.dumps(msg)
    return payload    # as sent


def test_reshaped_and_broken_messages_get_the_same_outcome():
    symbols = ["BTCUSDT", "ETHUSDT"]
    stream = ObsimStream(symbols, seed=5)
    rng = random.Random(3)
    twins = live_twins(symbols, stream)
    refetches = 0
    for payload in stream.diffs(1500):
        kind, *rest = twins.message(reshaped(payload, rng))
        actions = rest[0] if kind == "ok" else rest[1]
        for action in actions:   # a gap or a cross: the book comes back from a fresh snapshot
            if type(action) is FetchSnapshot:
                refetches += 1
                twins.snapshot(action.symbol, stream.snapshot(action.symbol))
    assert twins.scanned > 1500 // 3
    assert twins.fast.protocol_errors > 50
    assert refetches > 10


def test_scan_reads_fields_and_spans():
    data = b' {"stream":"x@depth","data":{"e":"depthUpdate","E":7,"s":"BTCUSDT","U":3,"u":4,' \
           b'"b":[["1.5","2"]],"a":[ ]}} '
    symbol, exch_ms, first, last, b0, b1, a0, a1 = scan_diff(data, 10)
    assert (symbol, exch_ms, first, last) == ("BTCUSDT", 7, 3, 4)
    assert orjson.loads(data[b0:b1]) == [["1.5", "2"]]
    assert data[a0:a1] == b"[ ]"
    assert scan_diff(data, 0) is None                    # more levels than allowed
    assert scan_diff(bytearray(data), 10)[0] == "BTCUSDT"  # any bytes-like object
    assert scan_diff(memoryview(data)[:-5], 10) is None


def test_futures_parse_every_message():
    adapter = BinanceFuturesAdapter(["BTCUSDT"])
    assert adapter.scan is None
