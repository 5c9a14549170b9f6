import pytest

from observer.config.settings import (
    ConfigError,
    config_from_dict,
    load_config,
    parse_cores,
    parse_feed_spec,
)

SAMPLE = """
[observer]
name = "main"
depth = 50
[[feed]]
exchange = "binance"
symbols = ["BTCUSDT", "ETHUSDT"]
ws_url = "wss://127.0.0.1:9443"
rest_url = "https://127.0.0.1:9444"
[[feed]]
exchange = "bybit"
category = "linear"
symbols = ["BTCUSDT"]
[[feed]]
exchange = "kraken"
symbols = ["BTC/USD"]
"""


def test_sample_file_loads_with_defaults(tmp_path):
    path = tmp_path / "observer.toml"
    path.write_text(SAMPLE)
    config = load_config(path)
    assert config.name == "main" and config.depth == 50
    binance, bybit, kraken = config.feeds
    assert binance.symbols == ("BTCUSDT", "ETHUSDT")
    assert binance.ws_url == "wss://127.0.0.1:9443"
    assert bybit.ws_url == "wss://stream.bybit.com/v5/public/linear"
    assert bybit.category == "linear"
    assert kraken.ws_url == "wss://ws.kraken.com/v2" and kraken.rest_url is None


def test_feed_shorthand():
    feed = parse_feed_spec("binance:BTCUSDT,ETHUSDT")
    assert feed.exchange == "binance" and feed.symbols == ("BTCUSDT", "ETHUSDT")
    assert feed.rest_url == "https://api.binance.com"
    assert parse_feed_spec("bybit/linear:BTCUSDT").ws_url.endswith("/v5/public/linear")
    assert parse_feed_spec("synthetic:BTCUSD").ws_url is None


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"observer": {"depth": 0}}, "depth: must be an integer from 1 to 1000, got 0"),
        ({"observer": {"depht": 5}}, "unknown key"),
        ({"observer": {"depth": True}}, "depth: must be an integer"),
        ({"feed": [{"symbols": ["X"]}]}, "exchange is required"),
        ({"feed": [{"exchange": "mtgox", "symbols": ["X"]}]}, "exchange: must be one of binance, binance-futures, coinbase, kraken, okx, bybit, synthetic, got 'mtgox'"),
        ({"feed": [{"exchange": "binance", "symbols": []}]}, "non-empty list"),
        ({"feed": [{"exchange": "binance", "symbols": ["X"], "ws_url": "http://x"}]}, "ws_url"),
        ({"feed": [{"exchange": "kraken", "symbols": ["X"], "category": "spot"}]}, "category: applies to bybit feeds only"),
        ({"feed": [{"exchange": "bybit", "symbols": ["X"], "category": "option"}]}, "category"),
        ({"feed": [{"exchange": "binance", "symbols": ["X"], "ca_file": "/nonexistent/ca.pem"}]}, "ca_file"),
        ({"feed": [{"exchange": "binance", "symbols": ["X", "x"]}]}, "configured twice"),
        ({"observer": {"cores": [1, 1]}}, "twice"),
        ({"observer": {"name": "a b"}}, "name"),
        ({"extra": {}}, "unknown table"),
    ],
)
def test_bad_config_is_a_clear_error(data, fragment):
    with pytest.raises(ConfigError, match=None) as info:
        config_from_dict(data, where="test.toml")
    assert fragment in str(info.value)
    assert "test.toml" in str(info.value)


def test_bad_toml_names_the_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[observer\n")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")


def test_bad_feed_spec():
    with pytest.raises(ConfigError, match="EXCHANGE:SYMBOL"):
        parse_feed_spec("binance")


def test_parse_cores():
    assert parse_cores("2,3", cores_n=8) == (2, 3)
    assert parse_cores("0-2,5", cores_n=8) == (0, 1, 2, 5)
    for bad in ("", "a", "1,1", "-1", "3-1", "0-8"):
        with pytest.raises(ConfigError):
            parse_cores(bad, cores_n=8)


def test_sample_config_in_docs_is_valid():
    from pathlib import Path

    config = load_config(Path(__file__).resolve().parents[2] / "docs" / "observer.toml")
    assert {f.exchange for f in config.feeds} == {"binance", "binance-futures", "coinbase", "kraken", "okx", "bybit"}


def test_sample_config_in_docs_shows_every_key():
    """docs/observer.toml lists every key the table declares (set or commented out)."""
    import re
    from pathlib import Path

    from observer.config.settings import FEED_KEYS, OBSERVER_KEYS

    text = (Path(__file__).resolve().parents[2] / "docs" / "observer.toml").read_text()
    shown = set(re.findall(r"^#?\s*([a-z_]+) = ", text, re.MULTILINE))
    assert {k.name for k in (*OBSERVER_KEYS, *FEED_KEYS)} <= shown


def test_error_names_the_line_of_the_key(tmp_path):
    path = tmp_path / "observer.toml"
    path.write_text('[observer]\nname = "x"\n\n[[feed]]\nexchange = "synthetic"\nsymbols = ["A"]\n'
                    '[[feed]]\nexchange = "synthetic"\n# rate_hz = 5\nsymbols = ["B"]\n'
                    'rate_hz = nan\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (f"{path}:11: [[feed]] #2 rate_hz: must be a finite number from "
                               f"0.001 to 1000000, got nan")
