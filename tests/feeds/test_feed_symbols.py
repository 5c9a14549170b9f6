"""Symbol naming (client/obproto/symbols.py): normalised names, books named exchange:SYMBOL."""

import pytest

from obproto.symbols import SymbolError, book_name, native, normalise


@pytest.mark.parametrize("given", ["BTC/USD", "BTC-USD", "XBT/USD", "btcusd", "XBTUSD", "btc_usd"])
def test_spellings_of_btcusd_normalise_alike(given):
    assert normalise(given) == "BTCUSD"


def test_usdt_pairs_stay():
    assert normalise("BTCUSDT") == "BTCUSDT"
    assert normalise("BTC-USDT") == "BTCUSDT"
    assert book_name("kraken", "XBT/USD") == "kraken:BTCUSD"


@pytest.mark.parametrize(
    "exchange, given, expected",
    [("kraken", "BTCUSD", "BTC/USD"), ("kraken", "XBT/USD", "XBT/USD"), ("coinbase", "BTCUSD", "BTC-USD"),
     ("okx", "BTCUSDT", "BTC-USDT"), ("okx", "BTC-USDT-SWAP", "BTC-USDT-SWAP"),
     ("binance", "btc/usdt", "BTCUSDT"), ("bybit", "BTCUSDT", "BTCUSDT"), ("binance-futures", "ETHUSDT", "ETHUSDT")],
)
def test_native_spelling(exchange, given, expected):
    assert native(exchange, given) == expected


@pytest.mark.parametrize("bad", ["", "BTC USD", "x" * 41, "BTC$", None])
def test_bad_symbols_are_clear_errors(bad):
    with pytest.raises(SymbolError):
        normalise(bad)


def test_unknown_exchange():
    with pytest.raises(SymbolError):
        book_name("ftx", "BTCUSD")
    with pytest.raises(SymbolError):
        native("coinbase", "FOOBAR")


def test_make_adapter_covers_the_published_depth():
    from observer.feeds import make_adapter

    kraken = make_adapter("kraken", ["BTC/USD"], depth=50)
    assert (kraken.depth, kraken.books["BTCUSD"].depth_max) == (100, 100)
    bybit = make_adapter("bybit", ["BTCUSDT"], depth=20, category="linear")
    assert (bybit.depth, bybit.category) == (50, "linear")
    assert make_adapter("binance", ["BTCUSDT"], depth=50).books["BTCUSDT"].depth_max == 0
    with pytest.raises(ValueError):
        make_adapter("ftx", ["BTCUSD"])
    with pytest.raises(ValueError):
        make_adapter("okx", ["BTC-USDT"], category="spot")
