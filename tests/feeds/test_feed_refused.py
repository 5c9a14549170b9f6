"""A symbol the exchange refuses is refused once: published invalid, then never asked again.

The adapters alone (sans-IO), so "never again" can be checked over an hour of ticks and a
reconnect in a few milliseconds: no request names the refused symbol, no deadline resyncs it,
and a connection left with only refused books is neither subscribed nor reconnected.
"""

import orjson

from observer.feeds.actions import FetchSnapshot, Invalid, Reconnect, Send
from observer.feeds.binance import BinanceAdapter
from observer.feeds.kraken import KrakenAdapter
from observer.feeds.sync import State

NS = 1_000_000_000
HOUR_NS = 3600 * NS


def sent(actions):
    return [orjson.loads(a.text) for a in actions if isinstance(a, Send)]


def kraken_refusal(symbol):
    return orjson.dumps({"error": f"Currency pair not supported {symbol}", "method": "subscribe",
                         "req_id": 1, "success": False, "symbol": symbol,
                         "time_in": "2026-01-01T00:00:00.000000Z",
                         "time_out": "2026-01-01T00:00:00.000100Z"})


def test_kraken_refused_pair_is_invalid_once_and_left_out():
    adapter = KrakenAdapter(["BTC/USD", "FOO/USD"])
    (request,) = sent(adapter.on_open(0, 0))
    assert request["params"]["symbol"] == ["BTC/USD", "FOO/USD"]
    reason = "Currency pair not supported FOO/USD"
    assert adapter.on_message(0, kraken_refusal("FOO/USD"), 1) == [Invalid("FOOUSD", reason)]
    assert adapter.syncs["FOOUSD"].state is State.INVALID
    assert adapter.on_message(0, kraken_refusal("FOO/USD"), 2) == []        # said once
    later = []
    for tick in range(1, 3601):                 # an hour of ticks: deadlines come and go
        later += adapter.on_tick(tick * NS)
    assert not any("FOO/USD" in a.text for a in later if isinstance(a, Send))
    adapter.on_close(0, "test")
    (request,) = [r for r in sent(adapter.on_open(0, HOUR_NS + 1)) if r["method"] == "subscribe"]
    assert request["params"]["symbol"] == ["BTC/USD"]


def test_a_connection_of_refused_books_only_is_left_quiet():
    adapter = KrakenAdapter(["FOO/USD"])
    adapter.on_open(0, 0)
    adapter.on_message(0, kraken_refusal("FOO/USD"), 1)
    later = [a for tick in range(1, 601) for a in adapter.on_tick(tick * NS)]
    assert not any(isinstance(a, Reconnect) for a in later)     # silence is no reason here
    assert not any(a.text.find("subscribe") >= 0 for a in later if isinstance(a, Send))
    adapter.on_close(0, "test")
    assert sent(adapter.on_open(0, HOUR_NS)) == []              # nothing to subscribe


def test_binance_invalid_symbol_reply_is_final_other_errors_retry():
    adapter = BinanceAdapter(["BTCUSDT", "FOOUSDT"])
    adapter.on_open(0, 0)                       # both queued for a REST snapshot
    body = orjson.dumps({"code": -1121, "msg": "Invalid symbol."})
    assert adapter.on_snapshot("FOOUSDT", 400, {}, body, 6 * NS) == [Invalid("FOOUSDT", "Invalid symbol.")]
    later = [a for tick in range(7, 3600) for a in adapter.on_tick(tick * NS)]
    assert "FOOUSDT" not in {a.symbol for a in later if isinstance(a, FetchSnapshot)}
    # Any other refusal of a snapshot is retried as before (a 400 that does not name the symbol).
    other = orjson.dumps({"code": -1100, "msg": "Illegal characters found in parameter 'limit'."})
    assert adapter.on_snapshot("BTCUSDT", 400, {}, other, 3600 * NS) == []
    assert adapter.syncs["BTCUSDT"].state is not State.INVALID
    assert "BTCUSDT" in adapter.scheduler.queue
