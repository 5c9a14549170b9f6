"""obctl as a user runs it: a separate process against a real observer."""

import json
import os
import signal
import subprocess
import sys
from decimal import Decimal

import pytest

from kit.procs import ObserverProcess, wait_until

WAIT_S = 30.0


@pytest.fixture(scope="module")
def observer():
    with ObserverProcess(rate=100) as obs:
        obs.wait_ready().close()
        yield obs


def obctl(*args, socket_path=None, env_socket=None):
    env = dict(os.environ)
    env.pop("OBSERVER_SOCKET", None)
    if env_socket:
        env["OBSERVER_SOCKET"] = env_socket
    cmd = [sys.executable, "-m", "obclient.obctl"]
    if socket_path:
        cmd += ["--socket", socket_path]
    return subprocess.run(cmd + list(args), capture_output=True, text=True, env=env,
                          timeout=WAIT_S)


def test_snapshot_ladder_has_asks_above_bids(observer):
    done = obctl("snapshot", "BTCUSD", "--depth", "3", socket_path=observer.socket_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("synthetic:BTCUSD  update ")
    assert "live" in lines[0]
    kinds = [line.split()[0] for line in lines[2:]]
    assert kinds == ["ask"] * 3 + ["----"] + ["bid"] * 3
    asks = [Decimal(line.split()[1]) for line in lines[2:5]]
    bids = [Decimal(line.split()[1]) for line in lines[6:9]]
    assert asks == sorted(asks, reverse=True)          # best ask just above the spread
    assert bids == sorted(bids, reverse=True)          # best bid just below it
    assert asks[-1] > bids[0]
    assert f"spread {asks[-1] - bids[0]}" in lines[5]


def test_snapshot_json_has_exact_decimal_strings(observer):
    done = obctl("snapshot", "synthetic:ETHUSD", "--json", "--depth", "4",
                 env_socket=observer.socket_path)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["book"] == "synthetic:ETHUSD"
    assert len(doc["bids"]) == 4 and len(doc["asks"]) == 4
    for price, size in doc["bids"] + doc["asks"]:
        assert isinstance(price, str) and isinstance(size, str)
        assert len(price.split(".")[1]) == 2            # price exponent -2, kept exactly
        assert len(size.split(".")[1]) == 4             # size exponent -4
    assert Decimal(doc["bids"][0][0]) < Decimal(doc["asks"][0][0])
    assert doc["stale"] is False
    assert doc["update_id"] > 0


def test_list_and_stats(observer):
    done = obctl("list", "--json", socket_path=observer.socket_path)
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert [r["book"] for r in rows] == ["synthetic:BTCUSD", "synthetic:ETHUSD"]
    assert not any(r["stale"] for r in rows)
    text = obctl("list", socket_path=observer.socket_path)
    assert "synthetic:BTCUSD" in text.stdout and "live" in text.stdout
    done = obctl("stats", "--json", socket_path=observer.socket_path)
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)
    assert stats["observer"]["name"] == observer.name
    assert stats["observer"]["uptime_s"] > 0
    assert {b["book"] for b in stats["books"]} == {"synthetic:BTCUSD", "synthetic:ETHUSD"}
    assert all(b["updates"] > 0 for b in stats["books"])
    assert any(c["name"] == "obctl" for c in stats["clients"])
    text = obctl("stats", socket_path=observer.socket_path)
    assert text.returncode == 0 and "generation" in text.stdout


def test_errors_are_one_line_and_non_zero(observer, tmp_path):
    missing = obctl("snapshot", "BTCUSD", socket_path=str(tmp_path / "none.sock"))
    assert missing.returncode == 1
    assert missing.stderr.startswith("obctl: no observer at ")
    assert len(missing.stderr.strip().splitlines()) == 1
    unknown = obctl("snapshot", "DOGEUSD", socket_path=observer.socket_path)
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == "obctl: unknown book 'DOGEUSD'"
    for depth in ("-1", "2.5", "ten", ""):
        bad_depth = obctl("snapshot", "BTCUSD", "--depth", depth, socket_path=observer.socket_path)
        assert bad_depth.returncode == 2
        assert bad_depth.stderr == (f"obctl: --depth: depth must be an integer >= 0 (0: all "
                                    f"levels), got {depth!r}\n")


def test_depth_zero_is_every_level_as_in_python_and_on_the_wire(observer):
    """One depth rule: obctl --depth 0, book.snapshot(depth=0) and the wire's depth 0 all mean
    every level; a negative depth is refused by all three."""
    import obclient
    from obproto import messages as m

    done = obctl("snapshot", "ETHUSD", "--json", "--depth", "0", socket_path=observer.socket_path)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    with obclient.connect(observer.socket_path) as client:
        book = client.book("ETHUSD")
        everything = book.snapshot(depth=None)
        assert book.snapshot(depth=0).n_bids == everything.n_bids > 10
        assert len(doc["bids"]) > 10
        wire = client.request(m.SnapshotRequest, "ETHUSD", 0)
        assert len(wire.bids) > 10
        for bad in (-1, 2.5, True, "3"):
            with pytest.raises(ValueError, match="depth must be an integer >= 0"):
                book.snapshot(depth=bad)
        with pytest.raises(obclient.RequestFailed, match="depth must be 0..4096"):
            client.request(m.SnapshotRequest, "ETHUSD", -1)


def _sigint_default():
    # A shell runs a background job with SIGINT ignored, and an ignored signal stays ignored
    # across exec: Python then installs no KeyboardInterrupt handler and Ctrl-C would do
    # nothing. The test means a user's terminal, where SIGINT has its default action.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_watch_redraws_until_ctrl_c(observer):
    env = dict(os.environ, OBSERVER_SOCKET=observer.socket_path)
    proc = subprocess.Popen([sys.executable, "-m", "obclient.obctl", "watch", "BTCUSD",
                             "--depth", "2"], stdout=subprocess.PIPE, env=env,
                            preexec_fn=_sigint_default)
    chunks = []
    try:
        os.set_blocking(proc.stdout.fileno(), False)

        def redrawn_twice():
            data = proc.stdout.read()
            if data:
                chunks.append(data)
            return b"".join(chunks).count(b"\x1b[H\x1b[J") >= 2

        wait_until(redrawn_twice, WAIT_S, "two redraws")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(WAIT_S) == 0
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    assert b"synthetic:BTCUSD" in b"".join(chunks)
