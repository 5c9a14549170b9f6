"""CPU time a live shard spends per Binance diff: obsim -> `observer --cores`, at a fixed rate.

What runs: obsim serves Binance spot diff depth over wss:// (10 level changes per event,
1000-level books, its realistic size texts, its walk precomputed so the sender is not the
limit) for `n` symbols at a fixed total rate (12,000 messages/s by default), and a real observer
process runs them in one shard process pinned to its own core (`--cores`), publishing a depth
of 10 into shared memory. Nothing reads the ring: the figure is the shard's own cost.

How it measures, after every book is live and a warm-up: over a fixed window, the shard
process's CPU time (the sum of its threads' run time from /proc/PID/task/*/schedstat, in ns;
user and system split from /proc/PID/stat), its ring head (one record per applied message),
its `flushes` (eventfd writes after batches), the write system calls it made (/proc/PID/io
`syscw`: eventfd writes and log lines) and its main thread's voluntary context switches (each
is one loop wake-up: the loop blocked, then something woke it). CPU per message is CPU time
over records appended. A row whose shard applied less than 95 % of what obsim sent says so (it
was behind), and each row says what obsim managed to send: on a loaded machine it may fall
short of the rate asked, and fewer messages per read cost more per message.

Why CPU time and not wall time: the machine is shared with other engineers' runs; a shard that
waits for a core does not use CPU meanwhile. The same input goes to every contender: obsim
always comes from this tree; with `--baseline DIR` (a checkout of the code before a change,
built with `python setup.py build_ext --inplace` there) the observer of each tree runs the
same configuration in interleaved rounds, and the ratio is printed.

Start-up: Binance snapshots are paced (one a second today, issue 13 point 3), so 200 books take
about 200 s to become live before the window starts.

One line per (tree, books): CPU µs/message (median of rounds), the rounds, user/system, loop
wake-ups, eventfd flushes and write calls per message; then the ratios.

Usage: python bench/cpu_per_msg.py [--books 2,200] [--rate 12000] [--window-s 5] [--rounds 1]
           [--baseline DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import os
import statistics
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, ROOT)

from obsim.harness import Obsim  # noqa: E402
from obsim.simconfig import write_config  # noqa: E402
from obsim.observerproc import ObserverProcess, unique_name  # noqa: E402

SEED = 7
RATE_TOTAL = 12_000
DEPTH_PUBLISHED = 10
CORE_SHARD, CORE_SIM = 0, 1
WARMUP_S = 3.0
WINDOW_S = 5.0
READY_BASE_S = 60.0
READY_PER_BOOK_S = 1.5      # the paced snapshots (one a second) and some slack
KEPT_UP_MIN = 0.95          # applied / offered below this: the row is marked behind
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PRECOMPUTE_EVENTS_TOTAL = 200_000   # obsim's cycle, shared out over the symbols
PRECOMPUTE_EVENTS_MAX = 20_000      # per symbol (its start-up computes them all)
SIM_START_S = 180.0


def symbols(books_n: int) -> list[str]:
    named = ["BTCUSDT", "ETHUSDT"]
    return named[:books_n] + [f"X{i:03d}USDT" for i in range(books_n - len(named))]


def sim_args(books_n: int, rate_total: float) -> list[str]:
    precompute = min(PRECOMPUTE_EVENTS_MAX, max(1000, PRECOMPUTE_EVENTS_TOTAL // books_n))
    return ["--exchanges", "binance", "--symbol", f"binance={','.join(symbols(books_n))}",
            "--rate", str(rate_total / books_n), "--depth", "1000", "--seed", str(SEED),
            "--changes-per-event", "10", "--precompute-events", str(precompute),
            "--binance-rest-weight-max", "1000000000", "--binance-connects-max", "0"]


class Sample:
    """Counters of the shard process (and obsim) at one instant."""

    def __init__(self, shard_pid: int, sim, reader) -> None:
        sim_pid = sim.proc.pid
        self.sent = sim.counters("binance")["messages_sent"]
        self.t_s = time.monotonic()
        self.cpu_ns = run_ns(shard_pid)
        self.user_s, self.system_s = user_system_s(shard_pid)
        self.wakeups = voluntary_switches(shard_pid)
        self.syscw = proc_io(shard_pid).get("syscw", 0)
        stats = reader.shard_stats(0)
        self.head = stats["head"]
        self.flushes = stats["flushes"]
        self.sim_cpu_ns = run_ns(sim_pid)


def run_ns(pid: int) -> int:
    """CPU time of all of a process's threads so far, in ns (schedstat: exact, not ticks)."""
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            with open(path, "rb") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass                     # a worker thread that ended meanwhile
    return total


def user_system_s(pid: int) -> tuple[float, float]:
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def voluntary_switches(pid: int) -> int:
    """The main thread's voluntary context switches: each is one blocking wait that ended."""
    with open(f"/proc/{pid}/task/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"voluntary_ctxt_switches:"):
                return int(line.split()[1])
    return 0


def proc_io(pid: int) -> dict:
    try:
        with open(f"/proc/{pid}/io", "rb") as f:
            return {k.decode(): int(v) for k, v in (line.split(b":") for line in f)}
    except PermissionError:
        return {}


def measure(tree: str | None, books_n: int, rate_total: float, window_s: float) -> dict:
    env = dict(os.environ)
    if tree:
        env["PYTHONPATH"] = os.path.abspath(tree) + os.pathsep + env.get("PYTHONPATH", "")
    with Obsim(sim_args(books_n, rate_total), start_timeout_s=SIM_START_S) as sim:
        pin(sim.proc.pid, CORE_SIM)
        obs = ObserverProcess(None, name=unique_name("cpu"), env=env)
        try:
            config_path = os.path.join(obs.workdir, "observer.toml")
            write_config(config_path, sim.info, [("binance", symbols(books_n))], name=obs.name,
                         depth=DEPTH_PUBLISHED, lag_bound_ms=10_000)
            obs.args += ["--config", config_path, "--cores", str(CORE_SHARD),
                         "--log-level", "warning"]
            # `python -m` puts the working directory first on sys.path, before PYTHONPATH: the
            # observer (and the shards it starts) must run from the tree they are measuring.
            with contextlib.chdir(os.path.abspath(tree) if tree else ROOT):
                obs.start()
            client = obs.wait_ready(READY_BASE_S + READY_PER_BOOK_S * books_n)
            try:
                reader = client._att.reader
                shard_pid = reader.shard_stats(0)["writer_pid"]
                time.sleep(WARMUP_S)
                before = Sample(shard_pid, sim, reader)
                time.sleep(window_s)
                after = Sample(shard_pid, sim, reader)
            finally:
                client.close()
        finally:
            obs.close()
    return row(before, after, rate_total)


def row(before: Sample, after: Sample, rate_total: float) -> dict:
    elapsed_s = after.t_s - before.t_s
    records = max(1, after.head - before.head)
    return {"us_per_msg": (after.cpu_ns - before.cpu_ns) / records / 1e3,
            "applied": records / max(1, after.sent - before.sent),
            "sent": (after.sent - before.sent) / elapsed_s,
            "user_us": (after.user_s - before.user_s) / records * 1e6,
            "system_us": (after.system_s - before.system_s) / records * 1e6,
            "wakeups": (after.wakeups - before.wakeups) / records,
            "flushes": (after.flushes - before.flushes) / records,
            "writes": (after.syscw - before.syscw) / records,
            "cores": (after.cpu_ns - before.cpu_ns) / elapsed_s / 1e9,
            "sim_cores": (after.sim_cpu_ns - before.sim_cpu_ns) / elapsed_s / 1e9}


def pin(pid: int, core: int) -> None:
    try:
        os.sched_setaffinity(pid, {core})
    except OSError:
        pass                            # fewer cores: run unpinned


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--books", default="2,200", help="comma list of book counts")
    p.add_argument("--rate", type=float, default=RATE_TOTAL, help="total messages/s offered")
    p.add_argument("--window-s", type=float, default=WINDOW_S)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--baseline", help="another checkout to run side by side (the code before)")
    args = p.parse_args(argv)
    trees = [("this", None)] + ([("baseline", args.baseline)] if args.baseline else [])
    books = [int(n) for n in args.books.split(",")]
    print(f"cpu_per_msg: Binance diff, 10 changes/event, 1000-level books, {args.rate:,.0f} msg/s "
          f"total, shard on core {CORE_SHARD}, obsim on core {CORE_SIM}, load average "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    runs = {(name, n): [] for n in books for name, _ in trees}
    for _ in range(args.rounds):
        for n in books:
            for name, tree in trees:
                runs[(name, n)].append(measure(tree, n, args.rate, args.window_s))
    for (name, n), results in runs.items():
        report(name, n, results)
    if args.baseline:
        for n in books:
            ours = statistics.median(r["us_per_msg"] for r in runs[("this", n)])
            base = statistics.median(r["us_per_msg"] for r in runs[("baseline", n)])
            print(f"cpu_per_msg: {n:>3} books  this/baseline x{ours / base:.2f}", flush=True)
    print(f"cpu_per_msg: load average at the end {os.getloadavg()[0]:.1f}", flush=True)
    return 0


def report(name: str, books_n: int, results: list[dict]) -> None:
    def med(key):
        return statistics.median(r[key] for r in results)
    rounds = ", ".join(f"{r['us_per_msg']:.1f}" for r in results)
    behind = "" if min(r["applied"] for r in results) >= KEPT_UP_MIN else \
        f"  BEHIND (applied {min(r['applied'] for r in results):.0%} of what obsim sent)"
    print(f"cpu_per_msg: {name:<8} {books_n:>3} books  {med('us_per_msg'):6.1f} us/msg CPU "
          f"(rounds {rounds}; user "
          f"{med('user_us'):.1f} sys {med('system_us'):.1f})  {med('cores'):.2f} cores  "
          f"wake-ups {med('wakeups'):.3f}/msg  flushes {med('flushes'):.3f}/msg  "
          f"writes {med('writes'):.3f}/msg  obsim sent {med('sent'):,.0f}/s on "
          f"{med('sim_cores'):.2f} cores{behind}",
          flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
