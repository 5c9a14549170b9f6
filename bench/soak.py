"""bench/soak.py: a bounded soak of the whole system; RSS slope and fds of every process.

What runs, all real and on loopback: obsim serving four venues (Binance, Kraken, OKX, Bybit),
two symbols each (8 books) at `--rate` events/s per symbol; a real `observer --cores A,B` (two
pinned shard processes, the feeds balanced between them); six obclient reader processes
following the update rings (blocking and busy-poll mixed, see READERS) and two socket
subscribers (records pushed over the control socket). Each child checks the per-book sequence
of what it receives (`book_seq` steps by one per publish of a book), so a record lost between
the shard and a client shows as a gap even where nothing else counts it. Every
`--fault-every-s` (30 s; 0 for none) obsim injects the next fault of FAULTS, a dropped
connection or a lost message (then a resync) on each venue in turn: memory kept per reconnect
or per resync shows as a slope only if they happen during the soak.

What it measures: every `--sample-s` it reads each process's VmRSS and RssAnon (the heap and
other private memory, i.e. what a leak grows; VmRSS adds the shared segment's touched pages and
file-backed code) from /proc and its open fd count. The result is the least-squares slope of
RSS over the run after `--warmup-s` (KB/min), per process, and the RssAnon slope over
`--windows` successive windows: allocator warm-up (arenas and pools that grow and settle)
shows as slopes that fall towards 0 window after window, a leak as a slope that stays. Also: fds
at the start and the end, records delivered to each client, drops (socket subscribers: counted
by the server and by obclient), laps (ring overruns of the readers), gaps (book_seq jumps seen
by clients; feed gaps, resyncs and reconnects from the observer's stats), the load average.

Busy-poll readers run at nice 19: on this shared 2-vCPU machine two processes spinning at
normal priority would take the shards' CPU away and the soak would measure starvation, not
memory. They still take every record through the spin path (laps would show if they fell
behind). The "next" readers and the lap counts use obclient's segment reader and follower
directly (`client._att.reader`, `stream._follower`), as bench/cores.py does.

`OBSERVER_TRACEMALLOC_S` (see observer/telemetry/memtrace.py) is passed through with `--tracemalloc-s`,
so each shard logs its top allocation differences into the observer's log; `--keep-log FILE`
copies that log out before the work directory is removed.

Detail lines go to stderr, the one result line to stdout. Nothing is left behind: children
die with this process (PR_SET_PDEATHSIG) and are stopped at the end, obsim and the observer
are stopped and their directories removed.

Usage: python bench/soak.py [--duration-s 300] [--warmup-s 60] [--rate 200] [--fault-every-s 30]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from obsim.harness import Obsim  # noqa: E402
from obsim.simconfig import write_config  # noqa: E402
from obsim.observerproc import ObserverProcess, unique_name  # noqa: E402
from obproto import layout  # noqa: E402

SEED = 13
VENUES = ("binance", "kraken", "okx", "bybit")   # two default symbols each: 8 books
# (name, how it follows, how it waits, shard): "stream" is obclient's UpdateStream over every
# book (the client API), "next" the segment reader's follower of one shard's ring, one record
# per call (wait_next, spin_next); "block" sleeps in epoll, "spin" busy-polls.
READERS = (("stream-block-0", "stream", "block", None), ("stream-block-1", "stream", "block", None),
           ("next-block-s0", "next", "block", 0), ("next-block-s1", "next", "block", 1),
           ("stream-spin", "stream", "spin", None), ("next-spin-s1", "next", "spin", 1))
SUBSCRIBERS = ("sub-0", "sub-1")
# Injected in turn, one every --fault-every-s: what production brings (a dropped connection, a
# lost message and its resync) must not leave memory behind either.
FAULTS = tuple((venue, kind) for venue in VENUES for kind in ("disconnect", "gap"))
BUSY_NICE = 19
WAIT_S = 0.25                # a child's longest wait: how soon it sees SIGTERM
CHILD_READY_S = 60.0
CHILD_STOP_S = 20.0
PR_SET_PDEATHSIG = 1
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# -- the children: readers and subscribers --------------------------------------------------


class SeqCheck:
    """Counts records and `book_seq` jumps per book (a jump: records lost on the way)."""

    def __init__(self):
        self.last = {}
        self.records = 0
        self.gaps = 0
        self.resyncs = 0

    def see(self, update) -> None:
        self.records += 1
        last = self.last.get(update.book_index)
        if update.kind == layout.KIND_RESYNC:
            self.resyncs += 1            # after a lap: the slot's state, a jump is expected
        elif last is not None and update.book_seq > last + 1:
            self.gaps += 1
        if last is None or update.book_seq > last:
            self.last[update.book_index] = update.book_seq


def child_main(role: str, socket_path: str) -> int:
    """A reader or subscriber process: prints `ready`, runs until SIGTERM, prints its counts."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)     # never outlive the soak
    stopping = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stopping.append(signum))
    import obclient

    spec = next((r for r in READERS if r[0] == role), None)
    if spec is not None and spec[2] == "spin":
        os.nice(BUSY_NICE)
    client = obclient.connect(socket_path, client_name=f"soak-{role}")
    try:
        check = SeqCheck()
        result = (run_subscriber(client, check, stopping) if spec is None
                  else run_reader(client, spec, check, stopping))
    finally:
        client.close()
    result.update(role=role, records=check.records, gaps=check.gaps, resyncs=check.resyncs)
    print(json.dumps(result), flush=True)
    return 0


def run_reader(client, spec, check: SeqCheck, stopping: list) -> dict:
    _, how, pace, shard = spec
    if how == "stream":
        stream = client.stream(busy_poll=pace == "spin")
        stream.poll()
        print("ready", flush=True)
        while not stopping:
            for update in stream.poll():
                check.see(update)
            stream.wait(WAIT_S)
        return {"laps": stream._follower.overruns if stream._follower else 0}
    follower = client._att.reader.follow([shard])
    take = follower.spin_next if pace == "spin" else follower.wait_next
    print("ready", flush=True)
    while not stopping:
        update = take(WAIT_S)
        if update is not None:
            check.see(update)
    return {"laps": follower.overruns}


def run_subscriber(client, check: SeqCheck, stopping: list) -> dict:
    client.subscribe([])                  # every book
    print("ready", flush=True)
    while not stopping:
        for update in client.pushed_updates(WAIT_S):
            check.see(update)
            if stopping:
                break
    proto = client._att.proto if client._att is not None else None
    return {"laps": 0, "client_dropped": proto.pushed_dropped if proto else 0}


# -- sampling -------------------------------------------------------------------------------


def proc_memory_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, RssAnon) in KB from /proc/PID/status."""
    rss = anon = 0
    with open(f"/proc/{pid}/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith(b"RssAnon:"):
                anon = int(line.split()[1])
    return rss, anon


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class Sampler:
    """RSS, RssAnon and fds of named processes over time (one row per sample)."""

    def __init__(self, pids: dict[str, int]):
        self.pids = dict(pids)
        self.times_s: list[float] = []
        self.rows: dict[str, list[tuple[int, int, int]]] = {name: [] for name in pids}
        self.started_s = time.monotonic()
        self.cpu_s = {name: [cpu_s(pid), 0.0] for name, pid in pids.items()}

    def sample(self) -> None:
        self.times_s.append(time.monotonic() - self.started_s)
        for name, pid in self.pids.items():
            rss, anon = proc_memory_kb(pid)
            self.rows[name].append((rss, anon, fd_count(pid)))
            self.cpu_s[name][1] = cpu_s(pid)

    def slope_kb_min(self, name: str, column: int, t0_s: float, t1_s: float) -> float:
        """Least-squares slope of a column over [t0_s, t1_s], in KB per minute."""
        t = np.array(self.times_s)
        y = np.array([row[column] for row in self.rows[name]], dtype=np.float64)
        keep = (t >= t0_s) & (t <= t1_s)
        if keep.sum() < 3:
            return float("nan")
        return float(np.polyfit(t[keep] / 60.0, y[keep], 1)[0])


# -- the run --------------------------------------------------------------------------------


def sim_args(rate: float) -> list[str]:
    return ["--exchanges", ",".join(VENUES), "--rate", str(rate), "--depth", "100",
            "--seed", str(SEED), "--binance-rest-weight-max", "1000000",
            "--binance-connects-max", "0"]


def start_children(socket_path: str) -> dict[str, subprocess.Popen]:
    children = {}
    for role in [r[0] for r in READERS] + list(SUBSCRIBERS):
        children[role] = subprocess.Popen(
            [sys.executable, __file__, "--child", role, "--socket", socket_path],
            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    for role, proc in children.items():
        line = read_line(proc, CHILD_READY_S)
        if line.strip() != "ready":
            raise RuntimeError(f"child {role} did not start: {line!r}")
    return children


def read_line(proc: subprocess.Popen, timeout_s: float) -> str:
    import select

    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    return proc.stdout.readline() if ready else ""


def stop_children(children: dict[str, subprocess.Popen]) -> dict[str, dict]:
    results = {}
    for proc in children.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for role, proc in children.items():
        line = read_line(proc, CHILD_STOP_S)
        results[role] = json.loads(line) if line.strip() else {"role": role, "failed": True}
        try:
            proc.wait(CHILD_STOP_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    return results


def kill_children(children: dict[str, subprocess.Popen]) -> None:
    for proc in children.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout and not proc.stdout.closed:
            proc.stdout.close()


def observer_pids(obs: ObserverProcess, client) -> dict[str, int]:
    reader = client._att.reader
    pids = {"supervisor": obs.proc.pid}
    for i in range(reader.geometry.shards_n):
        pids[f"shard{i}"] = reader.shard_stats(i)["writer_pid"]
    return pids


def soak(args) -> dict:
    allowed = sorted(os.sched_getaffinity(0))
    cores = f"{allowed[0]},{allowed[1 % len(allowed)]}" if len(allowed) > 1 else f"{allowed[0]}"
    env = dict(os.environ)
    if args.tracemalloc_s:
        env["OBSERVER_TRACEMALLOC_S"] = str(args.tracemalloc_s)
    with Obsim(sim_args(args.rate)) as sim:
        obs = ObserverProcess(None, name=unique_name("soak"), env=env)
        children: dict[str, subprocess.Popen] = {}
        try:
            config_path = os.path.join(obs.workdir, "observer.toml")
            write_config(config_path, sim.info, VENUES, name=obs.name, depth=20,
                         lag_bound_ms=1000)
            log_level = "info" if args.tracemalloc_s else "warning"
            obs.args += ["--config", config_path, "--cores", cores, "--log-level", log_level]
            obs.start()
            client = obs.wait_ready(90)
            try:
                pids = observer_pids(obs, client)
                children = start_children(obs.socket_path)
                pids.update({role: proc.pid for role, proc in children.items()})
                pids["obsim"] = sim.proc.pid
                sampler, faults_n = run_samples(pids, args, sim)
                end_pids = observer_pids(obs, client)
                stats = client.stats()
            finally:
                client.close()
            results = stop_children(children)
            code = obs.stop()
            if args.keep_log:
                shutil.copyfile(obs.log_path, args.keep_log)
            return {"sampler": sampler, "results": results, "stats": stats, "cores": cores,
                    "faults_n": faults_n,
                    "restarted": end_pids != observer_pids_from(pids), "stop_code": code,
                    "log_tail": obs.log_text().splitlines()[-5:]}
        finally:
            kill_children(children)
            obs.close()


def observer_pids_from(pids: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in pids.items() if k == "supervisor" or k.startswith("shard")}


def run_samples(pids: dict[str, int], args, sim) -> tuple[Sampler, int]:
    """Sample every `sample_s` and inject the next of FAULTS every `fault_every_s` until the
    end; returns the samples and the number of faults injected."""
    sampler = Sampler(pids)
    start_s = time.monotonic()
    next_sample_s, end_s = start_s, start_s + args.duration_s
    next_fault_s = start_s + args.fault_every_s if args.fault_every_s > 0 else math.inf
    faults_n = 0
    while next_sample_s <= end_s:
        if time.monotonic() >= next_fault_s:
            venue, kind = FAULTS[faults_n % len(FAULTS)]
            sim.fault(venue, kind)
            faults_n += 1
            next_fault_s += args.fault_every_s
        if time.monotonic() >= next_sample_s:
            sampler.sample()
            next_sample_s += args.sample_s
        time.sleep(max(0.0, min(next_sample_s, next_fault_s) - time.monotonic()))
    return sampler, faults_n


# -- the report -----------------------------------------------------------------------------


def window_slopes(sampler: Sampler, name: str, t0_s: float, t1_s: float, windows: int) -> list:
    """RssAnon slope over each of `windows` successive windows of [t0_s, t1_s]."""
    edges = np.linspace(t0_s, t1_s, windows + 1)
    return [sampler.slope_kb_min(name, 1, a, b) for a, b in zip(edges[:-1], edges[1:])]


def report_processes(sampler: Sampler, args) -> dict[str, tuple[float, float]]:
    """Detail per process on stderr; returns {name: (VmRSS slope, RssAnon slope)}."""
    t1_s = sampler.times_s[-1]
    slopes = {}
    for name, rows in sampler.rows.items():
        rss = sampler.slope_kb_min(name, 0, args.warmup_s, t1_s)
        anon = sampler.slope_kb_min(name, 1, args.warmup_s, t1_s)
        slopes[name] = (rss, anon)
        windows = window_slopes(sampler, name, args.warmup_s, t1_s, args.windows)
        cpu = (sampler.cpu_s[name][1] - sampler.cpu_s[name][0]) / t1_s
        print(f"  {name:<15} cpu {cpu:4.2f}  VmRSS {rows[0][0]:>7} -> {rows[-1][0]:>7} KB  {rss:+8.1f} KB/min   "
              f"RssAnon {rows[0][1]:>7} -> {rows[-1][1]:>7} KB  {anon:+8.1f} KB/min   "
              f"fds {rows[0][2]} -> {rows[-1][2]}   RssAnon by window "
              f"{' '.join(f'{w:+.0f}' for w in windows)}", file=sys.stderr)
    return slopes


def summarise_clients(results: dict, stats) -> dict:
    dropped_server = {row["name"]: row["dropped"] for row in stats.clients}
    readers = [results[r[0]] for r in READERS]
    subs = [results[s] for s in SUBSCRIBERS]
    every = readers + subs
    return {"failed": [r["role"] for r in every if r.get("failed")],
            "records_readers": [r.get("records", 0) for r in readers],
            "records_subs": [r.get("records", 0) for r in subs],
            "drops": sum(dropped_server.get(f"soak-{s}", 0) for s in SUBSCRIBERS)
            + sum(r.get("client_dropped", 0) for r in subs),
            "laps": sum(r.get("laps", 0) for r in readers),
            "gaps_readers": sum(r.get("gaps", 0) for r in readers),
            "gaps_subs": sum(r.get("gaps", 0) for r in subs)}


def feed_totals(stats) -> dict:
    return {field: sum(row[field] for row in stats.books)
            for field in ("gaps", "resyncs", "reconnects")}


def result_line(args, run: dict, slopes: dict, clients: dict, load_start: float) -> str:
    sampler, stats = run["sampler"], run["stats"]
    feeds = feed_totals(stats)
    fds = " ".join(f"{n} {sampler.rows[n][0][2]}/{sampler.rows[n][-1][2]}"
                   for n in ("supervisor", "shard0", "shard1") if n in sampler.rows)
    client_names = [r[0] for r in READERS] + list(SUBSCRIBERS)
    worst_client = max(client_names, key=lambda n: slopes[n][1])
    proc = " ".join(f"{n} {slopes[n][0]:+.0f} ({slopes[n][1]:+.0f})"
                    for n in ("supervisor", "shard0", "shard1", "obsim") if n in slopes)
    client_fds = all(sampler.rows[n][0][2] == sampler.rows[n][-1][2] for n in client_names)
    return (f"soak {args.duration_s:.0f} s (warm-up {args.warmup_s:.0f} s), 8 books x "
            f"{args.rate:g}/s, cores {run['cores']}: RSS slope KB/min, VmRSS (RssAnon): {proc}; "
            f"worst client {worst_client} {slopes[worst_client][0]:+.0f} "
            f"({slopes[worst_client][1]:+.0f}) | fds start/end {fds}, clients "
            f"{'flat' if client_fds else 'CHANGED'} | records per reader "
            f"{min(clients['records_readers']):,}-{max(clients['records_readers']):,}, per "
            f"subscriber {min(clients['records_subs']):,}-{max(clients['records_subs']):,} | "
            f"drops {clients['drops']} laps {clients['laps']} gaps {clients['gaps_readers']} in "
            f"readers, {clients['gaps_subs']} in subscribers (feed gaps "
            f"{feeds['gaps']} resyncs {feeds['resyncs']} reconnects {feeds['reconnects']}, "
            f"{run['faults_n']} faults injected"
            f"{', a shard RESTARTED' if run['restarted'] else ''}) | load {load_start:.1f} -> "
            f"{os.getloadavg()[0]:.1f}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration-s", type=float, default=300.0)
    p.add_argument("--warmup-s", type=float, default=60.0,
                   help="samples before this are left out of the slopes")
    p.add_argument("--sample-s", type=float, default=2.0)
    p.add_argument("--windows", type=int, default=4, help="successive slope windows (settling)")
    p.add_argument("--rate", type=float, default=200.0, help="obsim events/s per symbol")
    p.add_argument("--fault-every-s", type=float, default=30.0,
                   help="inject the next fault (disconnect, gap; venue by venue) this often; "
                        "0: none (the steady state alone)")
    p.add_argument("--tracemalloc-s", type=float, default=0.0,
                   help="shards log tracemalloc differences this often (observer/telemetry/memtrace.py)")
    p.add_argument("--keep-log", help="copy the observer's log here before it is removed")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--socket", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child_main(args.child, args.socket)
    if args.duration_s <= args.warmup_s:
        p.error("--duration-s must exceed --warmup-s")
    load_start = os.getloadavg()[0]
    print(f"soak: obsim {','.join(VENUES)} x2 symbols at {args.rate:g}/s each, observer with 2 "
          f"shards, {len(READERS)} readers, {len(SUBSCRIBERS)} socket subscribers, "
          f"{args.duration_s:.0f} s, "
          f"{f'a fault every {args.fault_every_s:g} s' if args.fault_every_s > 0 else 'no faults'}"
          f"; load average {load_start:.1f}", file=sys.stderr, flush=True)
    run = soak(args)
    slopes = report_processes(run["sampler"], args)
    clients = summarise_clients(run["results"], run["stats"])
    if clients["failed"] or run["stop_code"] != 0:
        print(f"  failed children {clients['failed']}, observer exit {run['stop_code']}: "
              f"{run['log_tail']}", file=sys.stderr)
    print(result_line(args, run, slopes, clients, load_start), flush=True)
    return 0 if not clients["failed"] and run["stop_code"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
