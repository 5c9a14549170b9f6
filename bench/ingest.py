"""Feed ingest: the same Binance depth stream into the observer and into cryptofeed, one run.

obsim serves Binance spot diff depth (two symbols, 10 level changes per event, 1000-level books,
realistic size texts, its random walk precomputed and sent as precomputed frames, ids and
event time patched per batch, one write per tick: obsim/framecycle.py, so the sender is not the
limit: it offered 162k msg/s from one core) over wss:// and https:// on loopback. Each contender gets the same stream at a ladder of rates, one fresh
obsim per step:

  observer    a real `observer --config ... --cores 0` process: one shard process pinned to
              the contender's core (session driver, Binance adapter, exact book, shared-memory
              publish); this process follows the update ring with obclient and takes its
              latency at each wake-up: wake time - exchange event time
  cryptofeed  cryptofeed 2.4.1 (uvloop) with its book checks on (cross_check), a Binance
              subclass pointed at obsim (bench/ingest_cryptofeed.py, in an interpreter that
              has it: `--cryptofeed-python PATH`); latency at its L2_BOOK callback. It writes
              its result to a file, never to a pipe (a result line cut mid-way once ended a run)

obsim stamps its send time into Binance's event time `E` (milliseconds, so both latencies carry
the same +0..1 ms truncation). Pinning: the contender on core 0; obsim and this process (the
follower, which may spin briefly after a wake-up) on core 1 (the machine has two). Each
contender warms up until it has caught up (a delivery under 50 ms behind, at most 10 s:
start-up snapshots and their backlog are not the steady state), then is measured for 3 s. A
step is sustained when the contender delivers >= 95 % of what obsim sent during the
measurement window (obsim's own counter: at the top of the ladder the sender may fall short of
the rate asked, and then the step says so; a contender obsim cut off as a slow consumer, its
queue past 64 MiB, fell behind and the step says that instead) with p99 under `--p99-bound-ms`. The ladder goes up
by half each step past its list until a step is not sustained (two attempts each), so it ends
where the contender fails, not where a list ends. One line per contender: the highest
sustained rate, and p50/p99 at the highest rate both sustained; then the ratio against the
targets (observer >= 5x cryptofeed with cross_check on, and >= 60,000 msg/s on one core).
Seeded; nothing is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from obsim.harness import Obsim  # noqa: E402
from obsim.simconfig import write_config  # noqa: E402
from obsim.observerproc import ObserverProcess, unique_name  # noqa: E402
from obproto import layout  # noqa: E402

SEED = 7
SYMBOLS = ("BTCUSDT", "ETHUSDT")
RATES_TOTAL = (1000, 2000, 4000, 6000, 8000, 12000, 16000, 24000, 32000)
RATE_STEP_FACTOR = 1.5       # past the list: each step half again, until one fails
RATE_MAX = 1_000_000         # a bound on the ladder itself
ALLOWED_CORES = frozenset(os.sched_getaffinity(0))   # before main pins this process
TARGET_RATIO = 5.0
TARGET_ONE_CORE = 60_000
WARMUP_MIN_S = 1.0
WARMUP_MAX_S = 10.0          # the window starts here even if the contender never caught up
CAUGHT_UP_S = 0.05           # warm-up ends at the first delivery at most this far behind
MEASURE_S = 3.0
DELIVERED_MIN = 0.95
SENDER_MIN = 0.9             # obsim sent less than this share of the asked rate: not judged
CORE_CONTENDER, CORE_SIM = 0, 1
ATTEMPTS = 2
CRYPTOFEED_PIN = "cryptofeed==2.4.1"


def sim_args(rate_total: int) -> list[str]:
    return ["--exchanges", "binance", "--symbol", f"binance={','.join(SYMBOLS)}",
            "--rate", str(rate_total / len(SYMBOLS)), "--depth", "1000", "--seed", str(SEED),
            "--changes-per-event", "10", "--precompute-events", "20000",
            "--binance-rest-weight-max", "1000000", "--binance-connects-max", "0"]


def pin(pid: int, core: int) -> None:
    try:
        os.sched_setaffinity(pid, {core})
    except OSError:
        pass                            # fewer cores than two: run unpinned, say so in the line


@contextlib.contextmanager
def all_cores():
    """This thread unpinned for the block: a child started in it inherits its affinity, and
    the observer's `--cores 0` is refused by a process allowed only the follower's core."""
    pinned = os.sched_getaffinity(0)
    os.sched_setaffinity(0, ALLOWED_CORES)
    try:
        yield
    finally:
        os.sched_setaffinity(0, pinned)


def percentile_ms(sorted_s: list, q: float) -> float:
    if not sorted_s:
        return float("nan")
    return sorted_s[min(len(sorted_s) - 1, int(q * len(sorted_s)))] * 1e3


def step_observer(rate_total: int) -> dict:
    with Obsim(sim_args(rate_total)) as sim:
        pin(sim.proc.pid, CORE_SIM)
        obs = ObserverProcess(None, name=unique_name("ingest"))
        try:
            config_path = os.path.join(obs.workdir, "observer.toml")
            write_config(config_path, sim.info, [("binance", list(SYMBOLS))], name=obs.name,
                         depth=10, lag_bound_ms=1000)
            obs.args += ["--config", config_path, "--log-level", "warning",
                         "--cores", str(CORE_CONTENDER)]
            with all_cores():            # its shard pins itself to the contender's core
                obs.start()
            client = obs.wait_ready(60)
            try:
                result = follow(client, sim)
            finally:
                client.close()
            result["log"] = [line for line in obs.log_text().splitlines()
                             if " WARNING " in line or " ERROR " in line][-5:]
            return result
        finally:
            obs.close()


def follow(client, sim) -> dict:
    """Warm up until caught up (start-up snapshots and their backlog are not the steady state),
    then count live updates and take wake-up latencies over the measurement window."""
    stream = client.stream()
    started_s = time.monotonic()
    measure_end_s = None
    latencies_ns, count, stale = [], 0, 0
    while measure_end_s is None or time.monotonic() < measure_end_s:
        stream.wait(0.05)
        wake_ns = time.time_ns()
        updates = stream.poll()
        if measure_end_s is None:
            now_s = time.monotonic()
            behind_s = (wake_ns - updates[-1].exch_ts_ns) / 1e9 if updates else None
            caught_up = behind_s is not None and behind_s < CAUGHT_UP_S
            if (now_s - started_s >= WARMUP_MIN_S and caught_up) or now_s - started_s >= WARMUP_MAX_S:
                measure_end_s = now_s + MEASURE_S
                sent_before = sim.counters("binance")["messages_sent"]
            continue
        for update in updates:
            if update.kind != layout.KIND_UPDATE or update.stale:
                stale += 1
                continue
            count += 1
            latencies_ns.append(wake_ns - update.exch_ts_ns)
    counters = sim.counters("binance")
    latencies_ns.sort()
    return {"count": count, "latencies_s": [x / 1e9 for x in latencies_ns], "stale": stale,
            "sent": counters["messages_sent"] - sent_before,
            "cut_off": counters["closes_slow_consumer"]}


def step_cryptofeed(python: str, rate_total: int) -> dict:
    with Obsim(sim_args(rate_total)) as sim, tempfile.TemporaryDirectory(prefix="ingest-cf-") as tmp:
        pin(sim.proc.pid, CORE_SIM)
        result_path = os.path.join(tmp, "result.json")
        params = {"ws_url": sim.ws_url("binance"), "rest_url": sim.rest_url("binance"),
                  "ca_file": sim.ca_file, "symbols": list(SYMBOLS), "warmup_min_s": WARMUP_MIN_S,
                  "warmup_max_s": WARMUP_MAX_S, "caught_up_s": CAUGHT_UP_S,
                  "measure_s": MEASURE_S, "core": CORE_CONTENDER, "result_path": result_path}
        env = dict(os.environ, REQUESTS_CA_BUNDLE=sim.ca_file, SSL_CERT_FILE=sim.ca_file)
        sent = SentSampler(sim)
        try:
            run = subprocess.run([python, str(Path(__file__).with_name("ingest_cryptofeed.py")),
                                  json.dumps(params)], capture_output=True, text=True, env=env,
                                 timeout=WARMUP_MAX_S + MEASURE_S + 60)
        finally:
            sent.stop()
        if run.returncode != 0 or not os.path.exists(result_path):
            raise RuntimeError(f"cryptofeed run failed ({run.returncode}): {run.stderr[-2000:]}")
        with open(result_path, encoding="utf-8") as f:
            result = json.load(f)
        result["sent"] = sent.between(*result["window_s"])
        result["cut_off"] = sent.cut_off
        return result


class SentSampler:
    """obsim's messages_sent counter, sampled in a thread with CLOCK_MONOTONIC times (shared
    by all processes), so the count sent in another process's window can be read off."""

    def __init__(self, sim, every_s: float = 0.1) -> None:
        self.samples: list[tuple[float, int]] = []
        self.cut_off = 0                # connections obsim closed as slow consumers
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(sim, every_s), daemon=True)
        self._thread.start()

    def _run(self, sim, every_s: float) -> None:
        while not self._stop.is_set():
            try:
                counters = sim.counters("binance")
                self.samples.append((time.monotonic(), counters["messages_sent"]))
                self.cut_off = counters["closes_slow_consumer"]
            except Exception:
                pass                    # obsim stopping: the samples so far are what we have
            self._stop.wait(every_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def at(self, t_s: float) -> float:
        before = [s for s in self.samples if s[0] <= t_s] or self.samples[:1]
        after = [s for s in self.samples if s[0] >= t_s] or self.samples[-1:]
        (t0, c0), (t1, c1) = before[-1], after[0]
        return c0 if t1 == t0 else c0 + (c1 - c0) * (t_s - t0) / (t1 - t0)

    def between(self, start_s: float, end_s: float) -> int:
        return int(self.at(end_s) - self.at(start_s)) if self.samples else 0


def judge(result: dict, rate_total: int, p99_bound_ms: float) -> dict:
    lat = result["latencies_s"]
    asked = MEASURE_S * rate_total
    sent = result.get("sent") or asked
    delivered = result["count"] / sent
    p50, p99 = percentile_ms(lat, 0.50), percentile_ms(lat, 0.99)
    # a contender cut off as a slow consumer lowers what obsim sends: that is the contender
    cut_off = result.get("cut_off", 0)
    sender_short = sent < SENDER_MIN * asked and not cut_off
    ok = delivered >= DELIVERED_MIN and p99 < p99_bound_ms and not sender_short
    return {"rate": rate_total, "delivered": delivered, "p50_ms": p50, "p99_ms": p99, "ok": ok,
            "sent_rate": sent / MEASURE_S, "sender_short": sender_short, "cut_off": cut_off}


def rate_ladder(rates, extend: bool):
    """The listed rates, then (`extend`) half again each step: the ladder ends where a
    contender fails, not where the list does."""
    yield from rates
    rate = rates[-1]
    while extend and rate < RATE_MAX:
        rate = int(rate * RATE_STEP_FACTOR)
        yield rate


def ladder(name: str, run_step, p99_bound_ms: float, rates, extend: bool = True) -> list[dict]:
    """Up the rates until a step is not sustained twice in a row (the machine is shared: one
    failed attempt may be someone else's burst on the contender's core; both get two)."""
    steps = []
    for rate_total in rate_ladder(rates, extend):
        for _ in range(ATTEMPTS):
            result = run_step(rate_total)
            step = judge(result, rate_total, p99_bound_ms)
            if step["ok"]:
                break
        steps.append(step)
        verdict = ("ok" if step["ok"] else "OBSIM COULD NOT SEND THIS RATE (the sender, not the "
                   "contender, is the limit)" if step["sender_short"] else
                   "NOT SUSTAINED (fell behind: obsim cut it off as a slow consumer)"
                   if step["cut_off"] else "NOT SUSTAINED")
        print(f"  {name:<10} offered {rate_total:>7}/s (sent {step['sent_rate']:>7.0f}/s)  "
              f"delivered {step['delivered']:6.1%}  p50 {step['p50_ms']:8.2f} ms  "
              f"p99 {step['p99_ms']:8.2f} ms  {verdict}", file=sys.stderr, flush=True)
        if not step["ok"]:
            for line in result.get("log", []):
                print(f"    {name} log: {line[:200]}", file=sys.stderr, flush=True)
            break
    return steps


def sustained(steps: list[dict]) -> int:
    rates = [s["rate"] for s in steps if s["ok"]]
    return max(rates) if rates else 0


def find_cryptofeed(given: str | None) -> str | None:
    """An interpreter that can import cryptofeed: the given one, else this one, else None."""
    for python in ([given] if given else []) + [sys.executable]:
        probe = subprocess.run([python, "-c", "import cryptofeed"], capture_output=True)
        if probe.returncode == 0:
            return python
    return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cryptofeed-python", default=os.environ.get("CRYPTOFEED_PYTHON"),
                   help="an interpreter with cryptofeed 2.4.1 installed (or $CRYPTOFEED_PYTHON)")
    p.add_argument("--p99-bound-ms", type=float, default=250.0)
    p.add_argument("--rates", help="comma list of total offered messages/s, only these (default: "
                                   "a ladder that goes on up until the contender fails)")
    args = p.parse_args()
    rates = [int(r) for r in args.rates.split(",")] if args.rates else list(RATES_TOTAL)
    cores = len(os.sched_getaffinity(0))
    pin(0, CORE_SIM)                    # the follower and the sampler: never the contender's core
    print(f"ingest: Binance diff depth, {len(SYMBOLS)} symbols, 10 changes/event, 1000-level "
          f"books, wss on loopback, {cores} cores (contender on core {CORE_CONTENDER}), "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    extend = not args.rates
    observer_steps = ladder("observer", step_observer, args.p99_bound_ms, rates, extend)
    python = find_cryptofeed(args.cryptofeed_python)
    cf_steps = None
    if python is None:
        print(f"cryptofeed: not importable here; install it in any venv with `pip install "
              f"{CRYPTOFEED_PIN}` (and uvloop) and pass --cryptofeed-python PATH", flush=True)
    else:
        cf_steps = ladder("cryptofeed", lambda r: step_cryptofeed(python, r), args.p99_bound_ms,
                          rates, extend)
    report(observer_steps, cf_steps)
    return 0


def report(observer_steps, cf_steps) -> None:
    both = {s["rate"] for s in observer_steps if s["ok"]}
    if cf_steps is not None:
        both &= {s["rate"] for s in cf_steps if s["ok"]}
    common = max(both) if both else None
    rows = [("observer", observer_steps)] + ([("cryptofeed", cf_steps)] if cf_steps else [])
    for name, steps in rows:
        at = next((s for s in steps if s["rate"] == common), None)
        tail = (f"at {common}/s: p50 {at['p50_ms']:.2f} ms, p99 {at['p99_ms']:.2f} ms"
                if at else "no common sustained rate")
        limit = " (the ladder ended at obsim's limit)" if steps and steps[-1]["sender_short"] else ""
        print(f"{name:<10} sustained {sustained(steps):>7} updates/s{limit}   {tail}", flush=True)
    o = sustained(observer_steps)
    print(f"target     observer on one core >= {TARGET_ONE_CORE}/s: "
          f"{'met' if o >= TARGET_ONE_CORE else 'NOT met'} ({o}/s)", flush=True)
    if cf_steps:
        c = sustained(cf_steps)
        ob_at = next((s for s in observer_steps if s["rate"] == common), None)
        cf_at = next((s for s in cf_steps if s["rate"] == common), None)
        rate_ratio = o / c if c else float("inf")
        p99_ratio = (f"{cf_at['p99_ms'] / ob_at['p99_ms']:.1f}x lower"
                     if ob_at and cf_at and ob_at["p99_ms"] > 0 else "n/a")
        print(f"ratio      observer/cryptofeed sustained rate {rate_ratio:.1f}x (target >= "
              f"{TARGET_RATIO:.0f}x: {'met' if rate_ratio >= TARGET_RATIO else 'NOT met'}), "
              f"observer p99 {p99_ratio} at {common}/s", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
