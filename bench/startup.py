"""bench/startup.py: how fast Binance books go live, what that costs the loop, and memory.

What runs, per book count (2, 20, 200 by default), each against a fresh obsim serving that many
Binance spot symbols (books of `--sim-depth` levels a side, `--rate` events a second each, as
the @100ms stream sends them), with the exchange's own REST budget (6000 weight a minute):

1. A real observer process (`observer --config`, one in-process shard, depth `--depth`).
   time-to-all-live: from obsim seeing the WebSocket connection to every book live in the
   segment (polled through obclient every POLL_S). Then RSS of the observer (VmHWM: the peak;
   VmRSS once synced and settled). Then obsim drops the connection and the same is timed again
   (reconnect: every book resyncs, on what is left of the minute's budget).
2. The same feed in a child process (adapter + session on a loom loop), to look inside the
   loop while it syncs: a probe fiber asks to sleep 1 ms and records how late it wakes (the
   longest time other fibers kept the loop, in wall time: on a loaded machine mostly the time
   the process was not running) and how much CPU the loop thread spent meanwhile (what the
   other fibers' turns between two of its wakes cost: an upper bound on the longest turn that
   load does not inflate much); and the loop's watchdog, bound at 10 ms, counts turns that ran
   that long with at least half of it on the loop's own CPU.

The budget's minimum is when the budget lets the last snapshot start, under the scheduler's
own choice of limits, had every reply come back at once (0 when all fit in what is left of the
window). For the reconnect it starts from the first sync's spend, that long after it.

Machine load changes every figure here: the load average is printed on each line.

Usage: python bench/startup.py [--books 2,20,200] [--depth 50] [--sim-depth 1000] [--rate 10]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, REPO)

import obclient  # noqa: E402
from observer.feeds.binance import BinanceAdapter  # noqa: E402
from observer.feeds.scheduler import NS_PER_S  # noqa: E402
from obsim.harness import Obsim  # noqa: E402
from obsim.observerproc import ObserverProcess, unique_name  # noqa: E402
from obsim.simconfig import write_config  # noqa: E402

POLL_S = 0.01
LIVE_DEADLINE_S = 300.0
SETTLE_S = 1.0          # after all live: the trim runs on the feed's next tick (0.1 s)
PROBE_SLEEP_S = 0.001
WATCHDOG_S = 0.010


def symbols_of(n: int) -> list[str]:
    return [f"S{i:03d}USDT" for i in range(n)]


def sim_args(n: int, args) -> list[str]:
    return ["--exchanges", "binance", "--symbol", "binance=" + ",".join(symbols_of(n)),
            "--rate", str(args.rate), "--depth", str(args.sim_depth), "--seed", "7",
            "--precompute-events", "2000"]


def status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def wait_until(predicate, what: str, timeout_s: float = LIVE_DEADLINE_S):
    deadline_s = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline_s:
            raise TimeoutError(f"not within {timeout_s} s: {what}")
        time.sleep(POLL_S)


def live_count(client, names) -> int:
    return sum(not client.snapshot(name, 0).stale for name in names)


def observer_run(n: int, args) -> dict:
    """Part 1: the real observer process. Times in seconds, RSS in MB."""
    with Obsim(sim_args(n, args)) as sim:
        obs = ObserverProcess(None, name=unique_name("bs"))
        try:
            config = os.path.join(obs.workdir, "observer.toml")
            write_config(config, sim.info, [("binance", symbols_of(n))], name=obs.name,
                         depth=args.depth)
            obs.args += ["--config", config, "--log-level", "warning"]
            obs.start()
            connected = wait_until(lambda: sim.counters("binance")["connections"] >= 1 and time.monotonic(),
                                   "the observer connected")
            client = wait_until(lambda: _connect(obs.socket_path), "the observer's socket")
            names = [b.name for b in client.books()]
            assert len(names) == n
            live_s = wait_until(lambda: live_count(client, names) == n and time.monotonic(),
                                "every book live") - connected
            time.sleep(SETTLE_S)
            pid = obs.proc.pid
            peak_mb, after_mb = status_kb(pid, "VmHWM") / 1024, status_kb(pid, "VmRSS") / 1024
            dropped = time.monotonic()
            sim.fault("binance", "disconnect")
            wait_until(lambda: live_count(client, names) < n, "books stale after the disconnect")
            again_s = wait_until(lambda: live_count(client, names) == n and time.monotonic(),
                                 "every book live after the reconnect") - dropped
            time.sleep(SETTLE_S)
            peak2_mb, after2_mb = status_kb(pid, "VmHWM") / 1024, status_kb(pid, "VmRSS") / 1024
            counters = sim.counters("binance")
            client.close()
            assert obs.stop() == 0, obs.log_text()[-2000:]
        finally:
            obs.close()
        return {"live_s": live_s, "again_s": again_s, "peak_mb": peak_mb, "after_mb": after_mb,
                "peak2_mb": peak2_mb, "after2_mb": after2_mb, "since_sync_s": dropped - connected,
                "rest_429": counters["rest_429"], "rest_418": counters["rest_418"]}


def _connect(socket_path):
    try:
        return obclient.connect(socket_path, client_name="bench-startup", timeout_s=1.0)
    except obclient.ObserverUnavailable:
        return None


_LOOP_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from observer import loom
from observer.feeds import make_adapter
from observer.feeds.session import Session
from obsim.harness import Obsim

args, symbols, depth = json.loads(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
options = json.loads(sys.argv[7])
with Obsim(args) as sim:
    adapter = make_adapter("binance", symbols, ws_url=sim.ws_url("binance"),
                           rest_url=sim.rest_url("binance"), depth=depth, **options)
    session = Session(adapter, lambda actions, recv_ns: None, ca_file=sim.ca_file, seed=1)
    loop = loom.Loop(watchdog_s=float(sys.argv[5]))
    probe_s = float(sys.argv[6])
    out = {"late_max_s": 0.0, "cpu_max_s": 0.0}

    def probe():
        while True:
            t, c = time.monotonic(), time.thread_time()
            loom.sleep(probe_s)
            out["late_max_s"] = max(out["late_max_s"], time.monotonic() - t - probe_s)
            out["cpu_max_s"] = max(out["cpu_max_s"], time.thread_time() - c)

    def main():
        started = time.monotonic()
        fiber = loop.spawn(probe, name="probe")
        session.start(loop)
        while not all(sync.live for sync in adapter.syncs.values()):
            if time.monotonic() - started > 300:
                raise TimeoutError("books not live")
            loom.sleep(0.01)
        out["live_s"] = time.monotonic() - started
        session.stop()
        fiber.cancel()
        reports = loop.watchdog_reports()
        out["stalls"] = loop.stats().watchdog_reports
        out["stall_max_s"] = max((r.ran_s for r in reports), default=0.0)
        out["stall_fibers"] = sorted({r.fiber_name for r in reports})
        out["stall_stacks"] = [r.stack[-1500:] for r in reports]
        out["catch_ups"] = session.stats.catch_ups
        loop.stop()

    try:
        loop.run(main)
    finally:
        loop.close()
    print(json.dumps(out))
"""


def loop_run(n: int, args) -> dict:
    """Part 2: the feed in a child process with a lag probe and a 10 ms watchdog."""
    options = {"snapshot_inflight_max": args.inflight} if args.inflight else {}
    done = subprocess.run([sys.executable, "-c", _LOOP_CHILD, REPO, json.dumps(sim_args(n, args)),
                           json.dumps(symbols_of(n)), str(args.depth), str(WATCHDOG_S),
                           str(PROBE_SLEEP_S), json.dumps(options)],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"loop child failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def budget_minimum(n: int, depth: int, since_sync_s: float | None = None) -> tuple[float, str]:
    """The budget's minimum for n books: when the scheduler's own policy (limits, probe, kept
    room) lets the last snapshot start, had every reply come back at once. From an empty
    budget, or (since_sync_s) for a reconnect that long after the first sync. Also the
    weight spent, for the report."""
    scheduler = BinanceAdapter(symbols_of(n), depth=depth).scheduler

    def sync(start_ns):
        for symbol in symbols_of(n):
            scheduler.request(symbol)
        now_ns, weight = start_ns, 0
        while scheduler.queue:
            started = scheduler.due(now_ns)
            for symbol, limit in started:
                weight += scheduler.weights[limit]
                scheduler.on_reply(symbol, 200, {}, now_ns)
            if not started:
                now_ns += NS_PER_S // 100  # waiting for weight to come back
        return (now_ns - start_ns) / NS_PER_S, weight

    first_s, first_weight = sync(0)
    if since_sync_s is None:
        return first_s, f"{first_weight} weight of {scheduler.budget.ip_max} usable"
    again_s, again_weight = sync(int((first_s + since_sync_s) * NS_PER_S))
    return again_s, f"{again_weight} weight, {since_sync_s:.1f} s after the first {first_weight}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--books", default="2,20,200")
    p.add_argument("--depth", type=int, default=50, help="the observer's published depth")
    p.add_argument("--sim-depth", type=int, default=1000, help="levels a side of obsim's books")
    p.add_argument("--rate", type=float, default=10.0, help="events a second per symbol")
    p.add_argument("--skip-loop", action="store_true", help="only the observer process")
    p.add_argument("--skip-observer", action="store_true", help="only the loop, in-process")
    p.add_argument("--stacks", action="store_true", help="print the watchdog's stacks")
    p.add_argument("--inflight", type=int, default=0,
                   help="snapshots in flight at once in the loop part (default: the adapter's)")
    args = p.parse_args(argv)
    for n in (int(x) for x in args.books.split(",")):
        if not args.skip_observer:
            report_observer(n, args)
        if not args.skip_loop:
            report_loop(n, args)
    return 0


def report_observer(n: int, args) -> None:
    obs = observer_run(n, args)
    minimum_s, figures = budget_minimum(n, args.depth)
    again_min_s, again_figures = budget_minimum(n, args.depth, obs["since_sync_s"])
    print(f"startup {n:>3} books: all live {obs['live_s']:6.2f} s after connect "
          f"(budget minimum {minimum_s:.0f} s: {figures}); after a reconnect "
          f"{obs['again_s']:6.2f} s (budget minimum {again_min_s:.0f} s: {again_figures}); "
          f"obsim answered {obs['rest_429']} x 429, {obs['rest_418']} x 418; "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    print(f"rss     {n:>3} books: peak {obs['peak_mb']:6.1f} MB, after sync {obs['after_mb']:6.1f} MB; "
          f"after the reconnect peak {obs['peak2_mb']:6.1f} MB, after {obs['after2_mb']:6.1f} MB; "
          f"load {os.getloadavg()[0]:.1f}", flush=True)


def report_loop(n: int, args) -> None:
    loop = loop_run(n, args)
    print(f"loop    {n:>3} books: while syncing, a 1 ms sleeper woke at most "
          f"{loop['late_max_s'] * 1000:6.1f} ms late, the loop's CPU between two of its wakes "
          f"at most {loop['cpu_max_s'] * 1000:5.1f} ms; watchdog turns >= {WATCHDOG_S * 1000:.0f} ms "
          f"on the loop's CPU: {loop['stalls']} (longest {loop['stall_max_s'] * 1000:.1f} ms"
          f"{', ' + ','.join(loop['stall_fibers']) if loop['stall_fibers'] else ''}); "
          f"live in {loop['live_s']:.2f} s in-process, {loop['catch_ups']} catch-up turns; "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    if args.stacks:
        for stack in loop["stall_stacks"]:
            print(stack, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
