"""The wiring from configuration to books (observer/shard/feedplan.py) and the exchange feed's sink
(observer/shard/exchangefeed.py) on a real segment: names, refusals, stale/live and lag flags."""

import logging
import os
import secrets
import subprocess
import sys
import time

import pytest

from obproto.segment import SegmentReader
from observer import cli
from observer.config import settings as cfg
from observer.book import BookUpdate
from observer.shard.exchangefeed import ExchangeFeed
from observer.shard.feedplan import plan
from observer.feeds.actions import Publish, Stale
from observer.feeds.clock import NS_PER_MS
from observer.shm import Segment



def config_of(*feeds, **top):
    return cfg.config_from_dict({"observer": top, "feed": list(feeds)})


def test_feeds_of_one_exchange_split_its_rest_budget_by_symbols():
    config = config_of({"exchange": "binance", "symbols": [f"A{i}USDT" for i in range(30)]},
                       {"exchange": "binance", "symbols": [f"B{i}USDT" for i in range(10)]},
                       {"exchange": "binance", "symbols": ["BTCUSDT"], "rest_url": "https://127.0.0.1:1"},
                       {"exchange": "binance-futures", "symbols": ["BTCUSDT"]},
                       {"exchange": "bybit", "symbols": ["BTCUSDT"]})
    _, feeds, _ = plan(config)
    budgets = [feed.adapter.scheduler.budget for feed in feeds[:4]]
    assert [b.own_max for b in budgets] == [int(5400 * 0.75), int(5400 * 0.25), 5400, 2160]
    assert not hasattr(feeds[4].adapter, "scheduler")


def test_books_are_named_exchange_symbol_with_the_native_symbol_kept():
    config = config_of({"exchange": "kraken", "symbols": ["XBT/USD", "ETH/USD"]},
                       {"exchange": "binance", "symbols": ["btcusdt"]},
                       {"exchange": "coinbase", "symbols": ["BTC-USD"]},
                       {"exchange": "okx", "symbols": ["ETHUSDT"]},
                       {"exchange": "bybit", "symbols": ["BTCUSDT"], "category": "linear"},
                       {"exchange": "bybit", "symbols": ["BTCUSDT"]},
                       {"exchange": "binance-futures", "symbols": ["ETHUSDT"]},
                       depth=10, lag_bound_ms=250)
    descs, feeds, index_of = plan(config)
    named = [(f"{d.exchange}:{d.symbol}", d.native) for d in descs]
    assert named == [("kraken:BTCUSD", "XBT/USD"), ("kraken:ETHUSD", "ETH/USD"),
                     ("binance:BTCUSDT", "BTCUSDT"), ("coinbase:BTCUSD", "BTC-USD"),
                     ("okx:ETHUSDT", "ETH-USDT"), ("bybit-linear:BTCUSDT", "BTCUSDT"),
                     ("bybit:BTCUSDT", "BTCUSDT"), ("binance-futures:ETHUSDT", "ETHUSDT")]
    assert [index_of[(d.exchange, d.symbol)] for d in descs] == list(range(len(descs)))
    assert all(d.shard_index == 0 for d in descs)
    assert {f.lag_bound_ns for f in feeds} == {250 * NS_PER_MS}
    assert feeds[0].adapter.ws_url == "wss://ws.kraken.com/v2"          # real endpoints by default
    assert feeds[4].adapter.ws_url.endswith("/v5/public/linear")


def test_two_spellings_of_one_book_are_refused():
    config = config_of({"exchange": "kraken", "symbols": ["XBT/USD", "BTC/USD"]})
    with pytest.raises(cfg.ConfigError, match="kraken"):
        plan(config)


def test_feed_shorthand_and_flags_reach_the_plan(tmp_path):
    from obsim.tls import make_certificates

    ca_file = make_certificates(tmp_path)[0]      # a real CA: the file is checked at start-up
    args = cli.parse_args(["--feed", "binance:BTCUSDT,ETHUSDT", "--feed", "kraken:BTC/USD",
                           "--ca-file", str(ca_file), "--lag-bound-ms", "123"])
    config = cli.build_config(args)
    descs, feeds, _ = plan(config)
    assert [f"{d.exchange}:{d.symbol}" for d in descs] == ["binance:BTCUSDT", "binance:ETHUSDT",
                                                           "kraken:BTCUSD"]
    assert [f.ca_file for f in feeds] == [str(ca_file)] * 2
    assert feeds[0].lag_bound_ns == 123 * NS_PER_MS


def test_a_bad_symbol_is_one_line_and_exit_2():
    run = subprocess.run([sys.executable, "-m", "observer.cli", "--feed", "kraken:XBT/USD,BTC/USD",
                          "--name", f"t{os.getpid()}{secrets.token_hex(3)}"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == cli.EXIT_USAGE
    assert run.stderr.startswith("observer: ") and run.stderr.count("\n") == 1, run.stderr


@pytest.fixture
def wired():
    """A real segment with two Binance books and an ExchangeFeed attached to its writer."""
    config = config_of({"exchange": "binance", "symbols": ["BTCUSDT", "ETHUSDT"]}, depth=5,
                       lag_bound_ms=100)
    descs, (feed,), index_of = plan(config)
    name = f"obtest-feed-{os.getpid()}-{secrets.token_hex(4)}"
    segment = Segment.create(name, descs, 1, 5, 64)
    segment.seal()
    writer = segment.writer(0)
    feed.attach(writer, index_of)
    fd = segment.reader_fd()
    reader = SegmentReader(fd, segment.eventfds)
    try:
        yield feed, reader
    finally:
        reader.close()
        os.close(fd)
        writer.release()
        segment.close()


def load(feed, symbol, exch_ts_ns):
    book = feed.adapter.books[symbol]
    book.apply(BookUpdate(True, [("100.5", "1.25")], [("101", "2")], 7, exch_ts_ns))


def feed_events(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "observer.feeds"]


def test_sink_publishes_live_then_stale_and_flags_lag_once(wired, caplog):
    feed, reader = wired
    caplog.set_level(logging.INFO, logger="observer.feeds")   # whatever level earlier tests left
    assert reader.snapshot(0).stale and reader.snapshot(1).stale      # nothing live before sync
    now_ns = time.time_ns()
    load(feed, "BTCUSDT", now_ns - 5 * NS_PER_MS)
    feed.sink([Publish("BTCUSDT")], now_ns)
    snap = reader.snapshot(0)
    assert not snap.stale and not snap.lagging
    assert snap.bids.tolist() == [[100.5, 1.25]] and snap.update_id == 7
    assert reader.book_stats(0)["lag_ns"] == 5 * NS_PER_MS
    assert feed_events(caplog) == ["book_live"]
    for behind_ms in (400, 300):
        load(feed, "BTCUSDT", now_ns - behind_ms * NS_PER_MS)
        feed.sink([Publish("BTCUSDT")], now_ns)
        assert reader.snapshot(0).lagging
    assert feed_events(caplog) == ["book_live", "book_lagging"]          # logged once
    assert reader.book_stats(0)["lagging_count"] == 1
    assert reader.book_stats(0)["lag_max_ns"] == 400 * NS_PER_MS
    load(feed, "BTCUSDT", now_ns - 80 * NS_PER_MS)                     # under the bound, not
    feed.sink([Publish("BTCUSDT")], now_ns)                             # yet under half of it
    assert reader.snapshot(0).lagging
    load(feed, "BTCUSDT", now_ns - 1 * NS_PER_MS)
    feed.sink([Publish("BTCUSDT")], now_ns)
    assert not reader.snapshot(0).lagging
    assert feed_events(caplog) == ["book_live", "book_lagging", "book_caught_up"]
    feed.adapter.syncs["BTCUSDT"].stats.gaps = 3
    feed.adapter.syncs["BTCUSDT"].stats.resyncs = 2
    feed.sink([Stale("BTCUSDT", "gap")], now_ns)
    assert reader.snapshot(0).stale
    assert reader.snapshot(0).bids.tolist() == [[100.5, 1.25]]            # last copy, marked stale
    counters = reader.book_stats(0)
    assert (counters["gaps"], counters["resyncs"]) == (3, 2)           # copied at once on stale
    assert reader.snapshot(1).stale                                     # the other book untouched
