"""Two shard processes serving two simulated exchanges (obsim over wss/https): a gap, a
disconnect and (last) a Kraken bad checksum are logged once with the book and the reason, and so is the resync after each; the Binance shard is SIGKILLed, its books
go stale, it restarts and resyncs from REST, its counters continue where they were, and the
Kraken shard's books stay live throughout."""

import json
import os
import signal
import time

import pytest

from obsim.harness import Obsim
from obsim.simconfig import write_config
from kit.procs import ObserverProcess, unique_name, wait_until

from prockit import TWO_CORES, Watcher, needs_two_cores

WAIT_S = 90.0
SIM_ARGS = ["--exchanges", "binance,kraken", "--rate", "40", "--depth", "60", "--seed", "5",
            "--binance-rest-weight-max", "100000"]


def _events(obs, event, **match):
    out = []
    for line in obs.log_text().splitlines():
        if line.startswith("{"):
            e = json.loads(line)
            if e["event"] == event and all(e.get(k) == v for k, v in match.items()):
                out.append(e)
    return out


@pytest.fixture()
def sim():
    with Obsim(SIM_ARGS) as sim:
        yield sim


@needs_two_cores
def test_two_exchanges_on_two_shards_kill_one_shard(sim):
    obs = ObserverProcess(None, name=unique_name("x"),
                          extra_args=["--cores", TWO_CORES, "--log-format", "json"])
    config = os.path.join(obs.workdir, "observer.toml")
    write_config(config, sim.info, ["binance", "kraken"], name=obs.name, depth=10)
    obs.args += ["--config", config]
    with obs:
        client = obs.wait_ready(WAIT_S)
        shard_of = {b.name: b.shard_index for b in client.books()}
        binance = sorted(n for n in shard_of if n.startswith("binance:"))
        kraken = sorted(n for n in shard_of if n.startswith("kraken:"))
        assert len({shard_of[n] for n in binance}) == 1 and len({shard_of[n] for n in kraken}) == 1
        victim_shard = shard_of[binance[0]]
        assert shard_of[kraken[0]] != victim_shard           # one exchange per shard
        watcher = Watcher(obs.socket_path, kraken)
        watcher.start()

        def stats():
            return {b["book"]: b for b in client.stats().books}

        gapped = binance[0]
        sim.fault("binance", "gap", symbol=sim.info["exchanges"]["binance"]["symbols"][0],
                  count=1)
        wait_until(lambda: _events(obs, "book_resynced", book=gapped, after="gap"), WAIT_S,
                   f"{gapped} to resync after the gap")
        stale_lines = _events(obs, "book_stale", book=gapped, reason="gap")
        assert len(stale_lines) == 1
        assert stale_lines[0]["shard"] == shard_of[gapped]     # a shard process tags its lines
        wait_until(lambda: stats()[gapped]["gaps"] >= 1, WAIT_S, "the gap in the book's stats")
        sim.fault("binance", "disconnect")
        for name in binance:
            wait_until(lambda: _events(obs, "book_resynced", book=name, after="disconnect"),
                       WAIT_S, f"{name} to resync after the disconnect")
        lost = _events(obs, "disconnected", exchange="binance")
        assert lost and all(e["reason"] and e["books"] for e in lost), lost
        before = stats()[gapped]

        row = client.stats().observer["shard_list"][victim_shard]
        kill_ns = time.time_ns()
        os.kill(row["pid"], signal.SIGKILL)
        wait_until(lambda: all(client.snapshot(n, 0).stale for n in binance)
                   or _shard_restarted(client, victim_shard), WAIT_S, "the shard's death seen")

        def binance_fresh():
            snaps = [client.snapshot(n, 0) for n in binance]
            return all(not s.stale and s.publish_ts_ns > kill_ns for s in snaps)

        wait_until(binance_fresh, WAIT_S, "the restarted Binance shard to resync its books")
        wait_until(lambda: stats()[gapped]["snapshots"] > before["snapshots"], WAIT_S,
                   "the new shard's counters copied into the segment")
        after = stats()[gapped]
        assert after["gaps"] >= before["gaps"] >= 1          # continued, not reset to zero
        assert after["resyncs"] >= before["resyncs"]
        watcher.finish()
        assert watcher.stale_seen == [] and watcher.reads > 10
        assert _shard_restarted(client, victim_shard)
        assert len(_events(obs, "shard_exit", shard=victim_shard)) == 1

        # now that the Kraken books may go stale: a bad checksum, logged once and resynced
        sim.fault("kraken", "bad_checksum", symbol=sim.info["exchanges"]["kraken"]["symbols"][0])
        wait_until(lambda: _events(obs, "book_resynced", book=kraken[0], after="checksum")
                   or _events(obs, "book_resynced", book=kraken[1], after="checksum"), WAIT_S,
                   "a Kraken book to resync after the bad checksum")
        bad = [e for n in kraken for e in _events(obs, "book_stale", book=n, reason="checksum")]
        assert len(bad) == 1, bad
        client.close()
        assert obs.stop() == 0
        assert "Traceback" not in obs.log_text()


def _shard_restarted(client, index) -> bool:
    row = client.stats().observer["shard_list"][index]
    return row["restarts"] >= 1 and row["alive"]
