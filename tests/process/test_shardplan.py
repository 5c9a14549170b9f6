"""The feed partition across shards, the core check, and the Prometheus rendering (no processes)."""

import os
import re

import pytest

from obclient.prometheus import escape, render
from observer.config import settings as cfg
from observer.config.shardplan import check_cores, expected_rate_hz, partition


def feed(exchange="synthetic", symbols=("A",), **kw):
    return cfg.FeedConfig(exchange=exchange, symbols=tuple(symbols), **kw)


def test_partition_balances_by_expected_rate():
    feeds = [feed(symbols=("A",), rate_hz=100.0), feed(symbols=("B", "C"), rate_hz=100.0),
             feed(symbols=("D",), rate_hz=100.0), feed("coinbase", ("BTC-USD",))]
    shard_of = partition(feeds, 2)
    load = [0.0, 0.0]
    for f, s in zip(feeds, shard_of):
        load[s] += expected_rate_hz(f)
    assert sorted(load) == [200.0, 250.0]             # 200 + 50 against 100 + 100 + ...
    assert partition(feeds, 2) == shard_of            # deterministic


def test_partition_keeps_assigned_shards_and_balances_the_rest_around_them():
    feeds = [feed(symbols=("A",), rate_hz=1000.0, shard=1), feed(symbols=("B",)),
             feed(symbols=("C",))]
    assert partition(feeds, 2) == [1, 0, 0]


def test_partition_one_shard_and_more_shards_than_feeds():
    feeds = [feed(symbols=("A",)), feed(symbols=("B",))]
    assert partition(feeds, 1) == [0, 0]
    assert partition(feeds, 4) == [0, 1]


def test_a_shard_outside_the_cores_is_a_config_error():
    with pytest.raises(cfg.ConfigError, match=r"asks for shard 2, but there are 2 shard\(s\)"):
        partition([feed(shard=2)], 2)


def test_check_cores_names_the_allowed_ones():
    check_cores((0, 1), [0, 1])
    with pytest.raises(cfg.ConfigError, match=r"core\(s\) 2,3 do not exist.*allowed cores: 0,1"):
        check_cores((1, 2, 3), [0, 1])


SAMPLE = re.compile(r'^[a-z_]+\{([a-z_]+="(?:[^"\\]|\\.)*",?)*\} -?[0-9.e+-]+$')


def test_prometheus_text_is_well_formed():
    observer = {"name": 'a"b', "uptime_s": 1.5, "books": 2, "shards": 2, "clients": 1,
                "accepted": 3, "denied": 0, "refused_busy": 0, "generation": 7,
                "shard_list": [{"shard": 0, "alive": True, "restarts": 2, "records": 10,
                                "flushes": 5, "heartbeat_age_s": 0.01, "books": 1},
                               {"shard": 1, "alive": False, "restarts": 0, "records": 0,
                                "flushes": 0, "heartbeat_age_s": None, "books": 1}]}
    books = [{"book": "kraken:BTCUSD", "exchange": "kraken", "shard": 0, "updates": 9,
              "gaps": 1, "stale": False, "lag_ns": 2_500_000, "last_update_age_s": None},
             {"book": "okx:X\nY", "shard": 1, "updates": 0, "stale": True}]
    text = render(observer, books)
    lines = text.splitlines()
    typed = {}
    for line in lines:
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            typed[name] = kind
        elif not line.startswith("# HELP "):
            assert SAMPLE.match(line), line
            name = line.split("{", 1)[0]
            assert name in typed, line                # TYPE comes before samples
    assert all(name.endswith("_total") == (kind == "counter") for name, kind in typed.items())
    assert 'observer_shard_restarts_total{instance_name="a\\"b",shard="0"} 2' in lines
    assert 'observer_shard_up{instance_name="a\\"b",shard="1"} 0' in lines
    assert ('observer_book_lag_seconds{instance_name="a\\"b",book="kraken:BTCUSD",'
            'exchange="kraken",shard="0"} 0.0025') in lines
    assert ('observer_book_stale{instance_name="a\\"b",book="okx:X\\nY",exchange="okx",'
            'shard="1"} 1') in lines
    assert not any("heartbeat_age" in l and 'shard="1"' in l for l in lines)   # None: left out
    assert escape('a\\b') == 'a\\\\b'


def _build(tmp_path, text, *flags):
    from observer import cli

    path = tmp_path / "observer.toml"
    path.write_text(text)
    return cli.build_config(cli.parse_args(["--config", str(path), *flags]))


FEED_ON_SHARD_1 = '[[feed]]\nexchange = "synthetic"\nsymbols = ["A"]\nshard = 1\n'


def test_config_cores_and_feed_shards_are_checked_before_start(tmp_path):
    allowed = sorted(os.sched_getaffinity(0))
    ok = _build(tmp_path, f"[observer]\ncores = {allowed[:1]}\n" + FEED_ON_SHARD_1.replace(
        "shard = 1", "shard = 0"))
    assert ok.cores == tuple(allowed[:1])
    flagged = _build(tmp_path, f"[observer]\ncores = [{allowed[-1] + 1}]\n" + FEED_ON_SHARD_1
                     .replace("shard = 1", "shard = 0"), "--cores", str(allowed[0]))
    assert flagged.cores == (allowed[0],)                   # --cores overrides the file's
    with pytest.raises(cfg.ConfigError, match="asks for shard 1, but there are 1 shard"):
        _build(tmp_path, FEED_ON_SHARD_1, "--cores", str(allowed[0]))
    with pytest.raises(cfg.ConfigError, match="without --cores"):
        _build(tmp_path, FEED_ON_SHARD_1)
    with pytest.raises(cfg.ConfigError, match=f"allowed cores: {','.join(map(str, allowed))}"):
        _build(tmp_path, f"[observer]\ncores = [{allowed[-1] + 1}]\n" + FEED_ON_SHARD_1)
    with pytest.raises(cfg.ConfigError, match="expected a list like 2,3"):
        _build(tmp_path, FEED_ON_SHARD_1, "--cores", "two")
