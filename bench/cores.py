"""bench/cores.py: sustained book updates per second with 1 shard and with 2 shards.

What runs: a real observer process (supervisor + shards) fed by synthetic feeds at full speed
(a rate far above what one core can apply, so each shard is CPU-bound on parse-free book
updates, exact Book apply, export into shared memory and ring records). The same two feeds
(16 symbols each, seeded) in every configuration:

- `in-process`: no --cores, the one shard runs in the supervisor's loop (the default);
- `1-shard`: --cores 0, one pinned shard process;
- `2-shards`: --cores 0,1, one pinned shard process per core, one feed each.

Why synthetic feeds and not obsim: on this 2-core machine obsim would run on the very cores
the shards are measured on, so the 2-shard figure would measure obsim's share of the CPU, not
the observer's scaling; the synthetic feed generates its load inside each shard (a seeded walk
applied through the exact Book from decimal text, as an exchange feed's updates are).

How it measures: after every book is live and a warm-up, it reads, through obclient from the
segment, each feed's update count (a synthetic feed numbers its updates; a book's published
`update_id` is the last one applied, so the largest over a feed's books is the feed's count) and
each shard's ring head (records appended, one per publish: a publish carries every update
applied to that book in one loop pass), waits `window_s`, reads again. updates/s and
publishes/s are the differences over the elapsed time. It also reports the CPU the observer's
processes used (cores) and how much of the machine stayed idle meanwhile: two shards that get
1.0 core between them while nothing is idle are limited by other work on the machine, not by
the observer. Configurations are run in
interleaved rounds and the median per configuration is reported, because this machine is
shared and noisy. One line per configuration, then the scaling ratio.

Usage: python bench/cores.py [--window-s 3] [--rounds 3] [--rate 1000000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from obsim.observerproc import ObserverProcess, unique_name  # noqa: E402

SYMBOLS_PER_FEED = 16
# Two feeds of 16 symbols. Why 16: a synthetic feed applies at most 64 updates per symbol per
# loop pass and the shard then sleeps at least TICK_MIN_S; with few symbols that sleep is a
# large part of each pass and the shard is not CPU-bound (measured: 2 symbols a feed used 0.4
# of a core per shard). With 16, a pass is about 1000 updates and the sleep a small part.
FEEDS = tuple("synthetic:" + ",".join(f"{prefix}{i:02d}USD" for i in range(SYMBOLS_PER_FEED))
              for prefix in ("A", "B"))
SEED = 7
WARMUP_S = 1.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def configs(allowed):
    out = [("in-process", [])]
    out.append(("1-shard", ["--cores", str(allowed[0])]))
    if len(allowed) >= 2:
        out.append(("2-shards", ["--cores", f"{allowed[0]},{allowed[1]}"]))
    return out


def measure(extra, rate_hz: float, window_s: float) -> float:
    obs = ObserverProcess(FEEDS[0], rate=rate_hz, seed=SEED, name=unique_name("bc"),
                          extra_args=["--feed", FEEDS[1], *extra, "--log-level", "warning"])
    with obs:
        client = obs.wait_ready()
        try:
            reader = client._att.reader
            shards_n = reader.geometry.shards_n
            groups = [[b.book_index for b in reader.books()
                       if b.symbol in f.split(":")[1].split(",")] for f in FEEDS]
            assert all(len(g) == SYMBOLS_PER_FEED for g in groups)
            time.sleep(WARMUP_S)

            pids = {obs.proc.pid, *(reader.shard_stats(i)["writer_pid"] for i in range(shards_n))}

            def counts():
                updates = sum(max(reader.snapshot(i, 1).update_id for i in g) for g in groups)
                return (updates, sum(reader.shard_stats(i)["head"] for i in range(shards_n)),
                        sum(cpu_s(pid) for pid in pids), idle_s())

            t0, (u0, h0, c0, i0) = time.perf_counter(), counts()
            time.sleep(window_s)
            t1, (u1, h1, c1, i1) = time.perf_counter(), counts()
        finally:
            client.close()
        assert obs.stop() == 0, obs.log_text()
    dt = t1 - t0
    return (u1 - u0) / dt, (h1 - h0) / dt, (c1 - c0) / dt, (i1 - i0) / dt


def idle_s() -> float:
    """CPU seconds the whole machine spent idle so far: what the observer left unused, or
    could not get because other work had it (Linux /proc/stat: idle + iowait)."""
    with open("/proc/stat", "rb") as f:
        fields = f.readline().split()
    return (int(fields[4]) + int(fields[5])) / CLOCK_TICKS


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--window-s", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--rate", type=float, default=1_000_000.0,
                   help="synthetic updates/s asked per symbol (far above what a core applies)")
    args = p.parse_args(argv)
    allowed = sorted(os.sched_getaffinity(0))
    runs = {name: [] for name, _ in configs(allowed)}
    for _ in range(args.rounds):
        for name, extra in configs(allowed):
            runs[name].append(measure(extra, args.rate, args.window_s))
    load = os.getloadavg()[0]
    median = {name: statistics.median(r[0] for r in v) for name, v in runs.items()}
    publishes = {name: statistics.median(r[1] for r in v) for name, v in runs.items()}
    cores_used = {name: statistics.median(r[2] for r in v) for name, v in runs.items()}
    idle = {name: statistics.median(r[3] for r in v) for name, v in runs.items()}
    base = median["1-shard"]
    for name, values in runs.items():
        print(f"cores {name:<10} {median[name]:>9,.0f} updates/s  x{median[name] / base:.2f} "
              f"vs 1-shard  cpu {cores_used[name]:.2f} cores (machine idle {idle[name]:.2f})  "
              f"{median[name] / max(cores_used[name], 1e-9):,.0f} updates/cpu-s  "
              f"({publishes[name]:,.0f} publishes/s; rounds "
              f"{', '.join(f'{r[0]:,.0f}' for r in values)}; load {load:.1f})")
    if "2-shards" in median:
        print(f"cores scaling 2-shards/1-shard x{median['2-shards'] / base:.2f} on "
              f"{len(allowed)} allowed cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
