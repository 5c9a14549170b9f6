"""bench/cores.py: many books per host: 200 books over --cores 0,1 against obsim, updates/s per
shard and feed-to-client latency from obsim's nanosecond send stamps; `--synthetic`: the
1-shard / 2-shard scaling of synthetic feeds.

Default run (`books`): obsim serves `--books` (200) Bybit spot symbols at `--rate` events/s
each and stamps every stream message with CLOCK_REALTIME ns as it writes it (obsim
`--send-stamps`: a side file of (symbol, update id, ns), obsim/stamps.py). A real
observer with two Bybit feeds of half the symbols each, over `--cores` (two pinned shard
processes), serves them; this process is one blocking obclient client following every book.
Once every book is live and after a warm-up, for `--window-s`, it records when it got each
update record (its clock, right after the poll that returned it); then it joins each record
with obsim's stamp of the message that carried that book's update id (a Bybit `u`: the
observer publishes the book's last applied `u` as its update_id; a publish that applied several
messages is joined with the last of them, so its latency is that of the newest message).

It prints one line per shard (updates/s applied: the sum of its books' update-id steps, and
publishes/s: its ring records) and one line per latency, p50/p99/p99.9/max in µs:
  feed->publish   obsim's hand-off of the batch to its socket (stamped after the batch is built,
                  before TLS and the send: obsim's own queue is not in it) to the shard's publish (TLS over loopback, WebSocket, parse,
                  book apply, export): the observer's added latency up to shared memory
  publish->client the shard's publish to this client holding the record (wake-up, ring read)
  feed->client    the sum: what a strategy sees
with the load, the CPU each process used and the machine's idle CPU, so a figure taken on a
busy machine says so. obsim runs on the same two cores as the shards (a 2-CPU machine has no
other), so its CPU is part of the load.

`--synthetic`: sustained book updates per second with 1 shard and with 2 shards.

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

Usage: python bench/cores.py [--books 200] [--rate 50] [--window-s 10] [--cores 0,1]
       python bench/cores.py --synthetic [--window-s 3] [--rounds 3] [--synthetic-rate 1000000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
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


# -- the default run: many books against obsim ---------------------------------------------

BOOKS_SEED = 13
BOOKS_DEPTH = 50            # the Bybit subscription depth the observer asks for
LIVE_TIMEOUT_S = 90.0
RECORDS_MAX = 4_000_000     # records kept in the window (preallocated)


def book_symbols(books_n: int) -> list[str]:
    return [f"B{i:03d}USDT" for i in range(books_n)]


def run_books(args) -> int:
    import numpy as np

    from obsim.harness import Obsim
    from obsim.stamps import read_stamps
    from obsim.simconfig import config_text

    allowed = sorted(os.sched_getaffinity(0))
    cores = args.cores or ",".join(str(c) for c in allowed[:2])
    window_s = 10.0 if args.window_s is None else args.window_s
    symbols = book_symbols(args.books)
    halves = [symbols[: len(symbols) // 2], symbols[len(symbols) // 2:]]
    load_start = os.getloadavg()[0]
    workdir = tempfile.mkdtemp(prefix="cores-")
    stamps_path = os.path.join(workdir, "stamps.bin")
    sim_args = ["--exchanges", "bybit", "--symbol", "bybit=" + ",".join(symbols),
                "--rate", str(args.rate), "--depth", "100", "--seed", str(BOOKS_SEED),
                "--bybit-connects-max", "0", "--send-stamps", stamps_path]
    try:
        with Obsim(sim_args) as sim:
            obs = ObserverProcess(None, name=unique_name("cb"))
            try:
                config_path = os.path.join(obs.workdir, "observer.toml")
                with open(config_path, "w") as f:
                    f.write(config_text(sim.info, [("bybit", h) for h in halves], name=obs.name,
                                        depth=BOOKS_DEPTH))
                obs.args += ["--config", config_path, "--cores", cores, "--log-level",
                             "warning"]
                obs.start()
                client = obs.wait_ready(LIVE_TIMEOUT_S)
                try:
                    got = _follow_window(client, args.warmup_s, window_s, sim.proc.pid, obs)
                finally:
                    client.close()
                assert obs.stop() == 0, obs.log_text()
            finally:
                obs.close()
        stamps = read_stamps(stamps_path)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    _report_books(args, cores, window_s, got, stamps, load_start, np)
    return 0


def _follow_window(client, warmup_s: float, window_s: float, obsim_pid: int, obs) -> dict:
    """Follow every book for warmup_s, then record (book, update id, publish ns, receive ns)
    of every update record for window_s; per-shard counters and CPU at both ends."""
    import numpy as np

    from obproto import layout

    reader = client._att.reader
    books = reader.books()
    shards_n = reader.geometry.shards_n
    stream = client.stream()
    deadline = time.monotonic() + warmup_s
    while time.monotonic() < deadline:
        stream.poll()
        stream.wait(0.05)
    pids = {"supervisor": obs.proc.pid, "obsim": obsim_pid}
    for i in range(shards_n):
        pids[f"shard{i}"] = reader.shard_stats(i)["writer_pid"]
    book_of = np.zeros((RECORDS_MAX,), np.int32)
    update_of = np.zeros((RECORDS_MAX,), np.int64)
    publish_of = np.zeros((RECORDS_MAX,), np.int64)
    recv_of = np.zeros((RECORDS_MAX,), np.int64)
    n = 0

    def counts():
        heads = [reader.shard_stats(i)["head"] for i in range(shards_n)]
        ids = [reader.snapshot(b.book_index, 0).update_id for b in books]
        return heads, ids, {k: cpu_s(p) for k, p in pids.items()}, idle_s()

    t0, c0 = time.perf_counter(), counts()
    stream.poll()  # records before t0 are not timed
    end = time.monotonic() + window_s
    while time.monotonic() < end and n < RECORDS_MAX:
        batch = stream.poll()
        if batch:
            now_ns = time.time_ns()
            for u in batch:
                if u.kind == layout.KIND_UPDATE and n < RECORDS_MAX:
                    book_of[n], update_of[n] = u.book_index, u.update_id
                    publish_of[n], recv_of[n] = u.publish_ts_ns, now_ns
                    n += 1
            continue
        stream.wait(0.05)
    t1, c1 = time.perf_counter(), counts()
    return {"dt": t1 - t0, "c0": c0, "c1": c1, "books": books, "shards_n": shards_n,
            "book": book_of[:n], "update": update_of[:n], "publish": publish_of[:n],
            "recv": recv_of[:n]}


def _report_books(args, cores, window_s, got, stamps, load_start, np) -> None:
    dt, books = got["dt"], got["books"]
    (heads0, ids0, cpu0, idle0), (heads1, ids1, cpu1, idle1) = got["c0"], got["c1"]
    print(f"# cores: {len(books)} Bybit books from obsim at {args.rate:g} events/s each "
          f"({len(books) * args.rate:,.0f}/s asked), observer --cores {cores} (2 feeds of "
          f"{len(books) // 2}), one blocking obclient client following every book; {window_s:g} s "
          f"window after {args.warmup_s:g} s warm-up; latency from obsim's CLOCK_REALTIME ns "
          f"send stamp (joined on symbol + update id); load {load_start:.2f} at start, "
          f"{os.getloadavg()[0]:.2f} at end")
    for shard in range(got["shards_n"]):
        mine = [i for i, b in enumerate(books) if b.shard_index == shard]
        updates = sum(ids1[i] - ids0[i] for i in mine) / dt
        publishes = (heads1[shard] - heads0[shard]) / dt
        cpu = (cpu1[f"shard{shard}"] - cpu0[f"shard{shard}"]) / dt
        print(f"cores shard {shard}: {len(mine):3d} books  updates/s {updates:8,.0f}  "
              f"publishes/s {publishes:8,.0f}  cpu {cpu:4.2f}  "
              f"({updates / max(cpu, 1e-9):,.0f} updates/cpu-s)")
    others = ", ".join(f"{k} {(cpu1[k] - cpu0[k]) / dt:.2f}" for k in cpu0 if not k.startswith("shard"))
    print(f"cores cpu: {others}, machine idle {(idle1 - idle0) / dt:.2f} (CPUs)")
    symbol = [b.symbol for b in books]
    send = np.array([stamps.get((symbol[b], int(u)), 0) for b, u in zip(got["book"], got["update"])],
                    dtype=np.int64)
    joined = send > 0
    total = len(send)
    print(f"cores records: {total:,} update records received, {int(joined.sum()):,} joined with a "
          f"send stamp ({total - int(joined.sum())} not: a snapshot or a message outside the log)")
    if not joined.any():
        return
    send, publish, recv = send[joined], got["publish"][joined], got["recv"][joined]
    for label, lat_ns in (("feed->publish  ", publish - send), ("publish->client", recv - publish),
                          ("feed->client   ", recv - send)):
        p50, p99, p999 = np.percentile(lat_ns, [50, 99, 99.9]) / 1e3
        print(f"cores latency {label}  p50 {p50:8.1f} us  p99 {p99:9.1f} us  p99.9 "
              f"{p999:9.1f} us  max {lat_ns.max() / 1e3:9.1f} us")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--synthetic", action="store_true", help="the 1-shard/2-shard scaling run")
    p.add_argument("--window-s", type=float, default=None,
                   help="measurement window (default 10 s; --synthetic: 3 s per round)")
    p.add_argument("--rounds", type=int, default=3, help="--synthetic: interleaved rounds")
    p.add_argument("--synthetic-rate", type=float, default=1_000_000.0,
                   help="--synthetic: updates/s asked per symbol (far above what a core applies)")
    p.add_argument("--books", type=int, default=200)
    p.add_argument("--rate", type=float, default=50.0, help="obsim events/s per book (a message "
                   "goes out only when the top 50 levels changed, so fewer are applied)")
    p.add_argument("--cores", default=None, help="observer --cores (default: the first two "
                   "allowed)")
    p.add_argument("--warmup-s", type=float, default=3.0)
    args = p.parse_args(argv)
    if not args.synthetic:
        return run_books(args)
    args.window_s = 3.0 if args.window_s is None else args.window_s
    args.rate = args.synthetic_rate
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
