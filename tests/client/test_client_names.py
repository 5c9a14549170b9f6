"""Book names as a strategy author types them: `exchange:SYMBOL`, the exchange's own spelling,
any case, bare symbols when one venue has them; ambiguous and unknown names are clear errors,
the same in Python and in obctl. Against a real observer fed by obsim (Kraken and Coinbase)."""

import os
import pickle
import subprocess
import sys

import pytest

import obclient
from obproto import messages as m
from venuekit import BOOK_NAMES, venue_observer

WAIT_S = 60.0
AMBIGUOUS_LINE = "BTCUSD is ambiguous: coinbase:BTCUSD, kraken:BTCUSD"

# index, exchange, symbol, native: the fields name resolution looks at (BookInfo's first four)
BOOKS = [(0, "kraken", "BTCUSD", "BTC/USD"), (1, "coinbase", "BTCUSD", "BTC-USD"),
         (2, "binance", "BTCUSDT", "BTCUSDT"), (3, "kraken", "ETHUSD", "ETH/USD"),
         (4, "okx", "SOLUSDT", "SOL-USDT")]


@pytest.mark.parametrize("name, index", [
    ("kraken:BTCUSD", 0), ("kraken:BTC/USD", 0), ("KRAKEN:btc/usd", 0), ("kraken:XBT/USD", 0),
    ("coinbase:BTC-USD", 1), ("coinbase:btc-usd", 1), ("coinbase:btcusd", 1),
    ("BTCUSDT", 2), ("btcusdt", 2), ("binance:BTC/USDT", 2),
    ("ETHUSD", 3), ("eth/usd", 3), ("sol-usdt", 4), ("SOLUSDT", 4)])
def test_names_resolve_in_every_spelling(name, index):
    assert m.resolve_book(name, BOOKS)[0] == index


@pytest.mark.parametrize("name", ["BTCUSD", "btc/usd", "BTC-USD"])
def test_a_symbol_on_two_venues_is_ambiguous_and_names_both(name):
    with pytest.raises(m.BookNameError) as caught:
        m.resolve_book(name, BOOKS)
    assert caught.value.code == m.ErrorCode.AMBIGUOUS_BOOK
    assert str(caught.value) == f"{name} is ambiguous: coinbase:BTCUSD, kraken:BTCUSD"
    assert caught.value.choices == ("coinbase:BTCUSD", "kraken:BTCUSD")


@pytest.mark.parametrize("name, message", [
    ("DOGEUSD", "unknown book 'DOGEUSD'"),
    ("kraken:BTCUSDT", "unknown book 'kraken:BTCUSDT'"),
    ("krakn:BTCUSD", "unknown book 'krakn:BTCUSD': no exchange 'krakn' here (books are on "
                     "binance, coinbase, kraken, okx)"),
    ("BTC USD", "unknown book 'BTC USD'"),
    ("", "a book name is SYMBOL or exchange:SYMBOL, got ''"),
    (None, "a book name is SYMBOL or exchange:SYMBOL, got None")])
def test_unknown_names_say_what_was_asked(name, message):
    with pytest.raises(m.BookNameError) as caught:
        m.resolve_book(name, BOOKS)
    assert caught.value.code == m.ErrorCode.UNKNOWN_BOOK
    assert str(caught.value) == message


@pytest.fixture(scope="module")
def observer():
    with venue_observer() as obs:
        yield obs


def test_python_api_resolves_native_and_lower_case_names(observer):
    with obclient.connect(observer.socket_path) as client:
        assert sorted(b.name for b in client.books()) == BOOK_NAMES
        assert client.book("kraken:BTC/USD").name == "kraken:BTCUSD"
        assert client.book("coinbase:btc-usd").name == "coinbase:BTCUSD"
        book = client.book("eth/usd")                       # one venue has it: no prefix needed
        assert book.name == "kraken:ETHUSD" and book.info.native == "ETH/USD"
        assert not client.book("Coinbase:BTC-USD").snapshot(depth=5).stale
        assert client.snapshot("kraken:btc/usd", 3).n_bids == 3


def test_python_api_ambiguous_and_unknown_names_are_book_not_found(observer):
    with obclient.connect(observer.socket_path) as client:
        with pytest.raises(obclient.AmbiguousBook) as caught:
            client.book("BTCUSD")
        assert str(caught.value) == AMBIGUOUS_LINE
        assert caught.value.choices == ("coinbase:BTCUSD", "kraken:BTCUSD")
        assert isinstance(caught.value, obclient.BookNotFound)
        with pytest.raises(obclient.AmbiguousBook, match=AMBIGUOUS_LINE):
            client.updates(["BTCUSD"])                      # at once, not at the first record
        with pytest.raises(obclient.AmbiguousBook, match=AMBIGUOUS_LINE):
            client.snapshot("BTCUSD")
        with pytest.raises(obclient.BookNotFound, match="unknown book 'DOGEUSD'"):
            client.book("DOGEUSD")


def test_updates_carry_the_book_name(observer):
    with obclient.connect(observer.socket_path) as client:
        index = client.book("kraken:BTC/USD").info.book_index
        got = []
        for update in client.updates(["kraken:BTC/USD", "coinbase:btc-usd"],
                                     idle_timeout_s=WAIT_S):
            got.append(update)
            if len({u.name for u in got}) == 2:
                break
        assert {u.name for u in got} == {"kraken:BTCUSD", "coinbase:BTCUSD"}
        assert all(u.kind == obclient.KIND_UPDATE for u in got)
        assert all((u.book_index == index) == (u.name == "kraken:BTCUSD") for u in got)
        kraken = next(u for u in got if u.book_index == index)
        assert "name='kraken:BTCUSD'" in repr(kraken)
        again = pickle.loads(pickle.dumps(kraken))           # e.g. through a multiprocessing queue
        assert again == kraken and again.name == "kraken:BTCUSD"
        assert isinstance(again, obclient.Update)


def obctl(socket_path, *args):
    env = dict(os.environ, OBSERVER_SOCKET=socket_path)
    return subprocess.run([sys.executable, "-m", "obclient.obctl", *args], capture_output=True,
                          text=True, env=env, timeout=WAIT_S)


@pytest.mark.parametrize("name, shown", [("kraken:BTC/USD", "kraken:BTCUSD"),
                                         ("coinbase:btc-usd", "coinbase:BTCUSD"),
                                         ("ETHUSD", "kraken:ETHUSD")])
def test_obctl_resolves_the_same_names(observer, name, shown):
    done = obctl(observer.socket_path, "snapshot", name, "--depth", "2")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{shown}  update ")


def test_obctl_prints_the_same_line_for_an_ambiguous_or_unknown_name(observer):
    done = obctl(observer.socket_path, "snapshot", "BTCUSD")
    assert (done.returncode, done.stderr) == (2, f"obctl: {AMBIGUOUS_LINE}\n")
    done = obctl(observer.socket_path, "watch", "btcusd")
    assert (done.returncode, done.stderr) == (2, "obctl: btcusd is ambiguous: coinbase:BTCUSD, "
                                                 "kraken:BTCUSD\n")
    done = obctl(observer.socket_path, "snapshot", "bitstamp:BTCUSD")
    assert done.returncode == 2
    assert done.stderr == ("obctl: unknown book 'bitstamp:BTCUSD': no exchange 'bitstamp' here "
                           "(books are on coinbase, kraken)\n")
    done = obctl(observer.socket_path, "list")
    assert done.returncode == 0
    assert "BTC-USD" in done.stdout and "BTC/USD" in done.stdout     # the native column


def test_the_socket_protocol_resolves_native_names_too(observer):
    with obclient.connect(observer.socket_path) as client:
        assert client.subscribe(["kraken:btc/usd"]) == [client.book("kraken:BTCUSD").info.book_index]
        with pytest.raises(obclient.RequestFailed, match="is ambiguous: coinbase:BTCUSD"):
            client.subscribe(["BTCUSD"])
