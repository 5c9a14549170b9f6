"""bench/fanout.py: a shard's publish rate with 1, 16, 64 and 256 blocking readers, same run.

What runs: a real observer process (supervisor and its shard) with one synthetic feed publishing
at `--rate` per second, and N reader processes, each a real obclient client (its own connection,
segment mapping and wake fds) blocking in `client.updates()`, as a strategy does. Each reader
checks that every book's sequence numbers arrive without a hole and counts the times it was
lapped (a KIND_RESYNC record: its ring cursor was overrun).

What it prints, one line per reader count: the shard's publishes/s (ring records appended) and
updates/s (the synthetic feed numbers its updates; the published `update_id` is the last one
applied) over `--window-s`, the ratio to the 1-reader row of the same run, the CPU the observer
used and the time its threads spent runnable but waiting for a CPU ('waiting', s/s, from
/proc schedstat; 'loop': the shard loop's thread alone, its wait per time it ran), the
readers' CPU, the machine's idle CPU, and what the readers saw: records,
holes, laps.
Then one verdict line for the target: publishes/s at 256 readers >= 0.9x at 1, nothing lost or
lapped.

Why a real observer and real processes: the cost under test is the machine's (a flush wakes
every waiting reader; the readers' wake-ups compete for the CPUs with the shard), which a model
with threads or a mocked writer would not show. Reader counts are run in interleaved rounds
(the median is printed) because the machine is shared.

Rows: 'paced' (the defaults) for each of --readers; the largest count again with the shard
asking for short scheduler slices ('paced+slice', shard_slice_us) and with pacing off
('unpaced'), so the effect of each is a ratio within one run.

Usage: python bench/fanout.py [--readers 1,16,64,256] [--rate 1000] [--window-s 3] [--rounds 2]
       [--sliced 256] [--slice-us 100] [--unpaced 256] [--readers-nice 0]
       [--cores 0] (a pinned shard process instead of the shard in the supervisor's loop)
       [--wake eventfd] (the observer's wake mode)
"""

from __future__ import annotations

import argparse
import errno
import os
import select
import signal
import statistics
import struct
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import obclient  # noqa: E402  (imported before the readers fork: they share its pages)
from obsim.observerproc import ObserverProcess, unique_name  # noqa: E402
from obproto import layout  # noqa: E402

SEED = 11
WARMUP_S = 1.0
READY_TIMEOUT_S = 120.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
LATENCY_BINS = 96  # quarter-octave bins of publish-to-reader latency from 1 us (bin 95: ~14 s)
# records, holes, laps, stale, then the latency histogram: one write, atomic below PIPE_BUF
_RESULT = struct.Struct(f"<qqqq{LATENCY_BINS}q")
assert _RESULT.size <= select.PIPE_BUF


def latency_bin(latency_us: int) -> int:
    """Quarter-octave bin: 4 per doubling from 1 us (0 for under 1 us), the last one open."""
    if latency_us < 1:
        return 0
    top = latency_us.bit_length() - 1
    quarter = (latency_us << 2 >> top) & 3
    return min(LATENCY_BINS - 1, 1 + 4 * top + quarter)


def bin_floor_us(k: int) -> float:
    """The lowest latency of bin k (its upper bound is 2**0.25..2**(1/3) times higher)."""
    if k == 0:
        return 0.0
    top, quarter = divmod(k - 1, 4)
    return (1 << top) * (1 + quarter / 4)


def percentile_us(histogram, q: float) -> float:
    """The upper edge of the bin holding the q-quantile (an upper bound, within 25 %)."""
    total = sum(histogram)
    if total == 0:
        return float("nan")
    rank = q * total
    seen = 0
    for k, n in enumerate(histogram):
        seen += n
        if seen >= rank:
            return bin_floor_us(k + 1)
    return float("inf")


def _connect(socket_path: str, client_name: str):
    """obclient.connect, again while the listen backlog is full (EAGAIN: 256 readers start at
    once on a loaded machine), until READY_TIMEOUT_S."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            return obclient.connect(socket_path, client_name=client_name)
        except obclient.ObserverUnavailable as exc:
            # obclient names the errno only in its message (it raises `from None`)
            if f"[Errno {errno.EAGAIN}]" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


class _Stop(Exception):
    pass


def _on_term(_signum, _frame):
    raise _Stop


def reader_child(socket_path: str, k: int, ready_w: int, result_w: int, nice: int) -> None:
    """Attach, follow every book blocking, check continuity; report on SIGTERM."""
    code = 1
    os.nice(nice)
    records = holes = laps = stale = 0
    histogram = [0] * LATENCY_BINS
    try:
        signal.signal(signal.SIGTERM, _on_term)
        client = _connect(socket_path, f"fanout{k}")
        last_seq: dict[int, int] = {}
        updates = client.updates()
        os.write(ready_w, b"r")
        try:
            for update in updates:
                kind = update.kind
                if kind == layout.KIND_UPDATE:
                    records += 1
                    histogram[latency_bin((time.time_ns() - update.publish_ts_ns) // 1000)] += 1
                    last = last_seq.get(update.book_index)
                    if last is not None and update.book_seq != last + 1:
                        holes += 1
                    last_seq[update.book_index] = update.book_seq
                elif kind == layout.KIND_RESYNC:
                    laps += 1
                    last_seq[update.book_index] = update.book_seq
                else:
                    stale += 1
        except _Stop:
            pass
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.write(result_w, _RESULT.pack(records, holes, laps, stale, *histogram))
        client.close()
        code = 0
    except _Stop:
        pass
    except Exception as exc:  # say why in one line; the parent sees a reader missing
        os.write(2, f"fanout reader {k}: {type(exc).__name__}: {exc}\n".encode())
    finally:
        os._exit(code)


PACED = "wake_gap_us_per_client = 40\n"       # the value README suggests (off by default)
MODES = {"paced": PACED, "unpaced": "wake_gap_us_per_client = 0\n",
         "paced+slice": PACED + "shard_slice_us = {slice_us}\n"}


def measure(readers_n: int, mode: str, args, workdir: str) -> dict:
    config = os.path.join(workdir, f"fanout-{readers_n}-{mode}.toml")
    pacing = MODES[mode].format(slice_us=args.slice_us)
    if args.wake:
        pacing += f"wake = \"{args.wake}\"\n"
    with open(config, "w") as f:
        f.write(f"[observer]\nclients_max = {readers_n + 8}\nclients_per_uid_max = "
                f"{readers_n + 8}\nlog_level = \"warning\"\n{pacing}\n"
                f"[[feed]]\nexchange = \"synthetic\"\nsymbols = [\"BTCUSD\"]\n"
                f"rate_hz = {args.rate}\nseed = {SEED}\n")
    extra = ["--config", config] + (["--cores", args.cores] if args.cores else [])
    obs = ObserverProcess(None, name=unique_name("fan"), extra_args=extra)
    pids: list[int] = []
    ready_r, ready_w = os.pipe()
    result_r, result_w = os.pipe()
    with obs:
        harness = obs.wait_ready()
        try:
            for k in range(readers_n):
                pid = os.fork()
                if pid == 0:
                    os.close(ready_r)
                    os.close(result_r)
                    reader_child(obs.socket_path, k, ready_w, result_w, args.readers_nice)
                pids.append(pid)
            os.close(ready_w)
            ready_w = -1
            _await_ready(ready_r, readers_n)
            time.sleep(WARMUP_S)
            reader = harness._att.reader
            observer_pids = {obs.proc.pid, *(reader.shard_stats(i)["writer_pid"]
                                             for i in range(reader.geometry.shards_n))}
            shard_pid = reader.shard_stats(0)["writer_pid"]
            t0, c0, r0 = (time.perf_counter(), _counts(reader, observer_pids, shard_pid),
                          _usage(pids))
            time.sleep(args.window_s)
            t1, c1, r1 = (time.perf_counter(), _counts(reader, observer_pids, shard_pid),
                          _usage(pids))
        finally:
            for pid in pids:
                os.kill(pid, signal.SIGTERM)
            os.close(result_w)
            results = _collect(result_r, pids)
            harness.close()
            for fd in (ready_r, ready_w, result_r):
                if fd >= 0:
                    os.close(fd)
        assert obs.stop() == 0, obs.log_text()
    if len(results) != readers_n:
        raise RuntimeError(f"{readers_n - len(results)} of {readers_n} readers did not report")
    dt = t1 - t0
    publishes, updates, observer_cpu, idle, runq_wait, loop_wait, loop_waits = (
        (b - a) / dt for a, b in zip(c0, c1))
    histogram = [sum(r[4 + k] for r in results) for k in range(LATENCY_BINS)]
    return {"publishes": publishes, "updates": updates, "observer_cpu": observer_cpu,
            "idle": idle, "runq_wait": runq_wait, "records": sum(r[0] for r in results),
            "loop_wait_us": loop_wait / max(loop_waits, 1.0) * 1e6,
            "holes": sum(r[1] for r in results), "laps": sum(r[2] for r in results),
            "stale": sum(r[3] for r in results), "readers_cpu": (r1[0] - r0[0]) / dt,
            "reader_wakes": (r1[1] - r0[1]) / dt / readers_n,
            "p50_us": percentile_us(histogram, 0.5), "p99_us": percentile_us(histogram, 0.99)}


def _await_ready(ready_r: int, readers_n: int) -> None:
    got = 0
    deadline = time.monotonic() + READY_TIMEOUT_S
    while got < readers_n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{got} of {readers_n} readers attached in {READY_TIMEOUT_S} s")
        if not select.select([ready_r], [], [], 1.0)[0]:
            continue
        got += len(os.read(ready_r, readers_n))


def _collect(result_r: int, pids: list[int]) -> list[tuple]:
    """Every reader's result, read until the last one exits (the pipe holds 64 KiB, less
    than 256 results: reading only after waiting would deadlock)."""
    data = b""
    while chunk := os.read(result_r, 1 << 16):
        data += chunk
    for pid in pids:
        os.waitpid(pid, 0)
    return [_RESULT.unpack_from(data, i) for i in range(0, len(data), _RESULT.size)]


def _usage(pids) -> tuple[float, int]:
    """CPU seconds and voluntary context switches (sleeps, so wake-ups) of these processes."""
    cpu_s = 0.0
    switches = 0
    for pid in pids:
        cpu_s += _cpu_s(pid)
        try:
            with open(f"/proc/{pid}/status", "rb") as f:
                for line in f:
                    if line.startswith(b"voluntary_ctxt_switches"):
                        switches += int(line.split()[1])
        except OSError:
            pass
    return cpu_s, switches


def _counts(reader, pids, shard_pid: int) -> tuple:
    head = sum(reader.shard_stats(i)["head"] for i in range(reader.geometry.shards_n))
    update_id = sum(reader.snapshot(b.book_index, 1).update_id for b in reader.books())
    return (head, update_id, sum(_cpu_s(pid) for pid in pids), _idle_s(),
            sum(_runq_wait_s(pid) for pid in pids), *_loop_wait(shard_pid))


def _loop_wait(pid: int) -> tuple[float, int]:
    """The shard loop's thread alone (the process's main thread): seconds runnable but
    waiting for a CPU, and how many times it ran (schedstat fields 2 and 3), so the wait per
    wake-up of the shard is a ratio of the two deltas."""
    try:
        with open(f"/proc/{pid}/schedstat", "rb") as f:
            fields = f.read().split()
        return int(fields[1]) / 1e9, int(fields[2])
    except (OSError, IndexError, ValueError):
        return 0.0, 0


def _runq_wait_s(pid: int) -> float:
    """Seconds this process's threads spent runnable but waiting for a CPU (schedstat field
    2): where a shard's time goes when readers crowd it out, without perf."""
    total_ns = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                total_ns += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):
            pass
    return total_ns / 1e9


def _cpu_s(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _idle_s() -> float:
    with open("/proc/stat", "rb") as f:
        fields = f.readline().split()
    return (int(fields[4]) + int(fields[5])) / CLOCK_TICKS


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--readers", default="1,16,64,256")
    p.add_argument("--rate", type=float, default=1000.0, help="synthetic updates/s (one book)")
    p.add_argument("--window-s", type=float, default=3.0)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--cores", default="", help="passed to observer --cores (default: none)")
    p.add_argument("--readers-nice", type=int, default=0,
                   help="readers lower their own priority by this much (a deployment choice: "
                   "strategies below the observer)")
    p.add_argument("--sliced", default="256", help="reader counts to run again with "
                   "shard_slice_us = --slice-us (observer/shard/schedslice.py); '' for none")
    p.add_argument("--slice-us", type=int, default=100)
    p.add_argument("--wake", default="", help="the observer's wake mode (auto, eventfd, "
                   "io_uring; default: the observer's default)")
    p.add_argument("--unpaced", default="256", help="reader counts to run again with pacing "
                   "off (wake_gap_us_per_client = 0), for the before/after ratio; '' for none")
    args = p.parse_args(argv)
    counts = [(int(n), "paced") for n in args.readers.split(",")]
    counts += [(int(n), "paced+slice") for n in args.sliced.split(",") if n]
    counts += [(int(n), "unpaced") for n in args.unpaced.split(",") if n]
    load_start = os.getloadavg()[0]
    runs: dict[tuple, list[dict]] = {key: [] for key in counts}
    with tempfile.TemporaryDirectory(prefix="fanout-") as workdir:
        for _ in range(args.rounds):
            for n, mode in counts:
                runs[n, mode].append(measure(n, mode, args, workdir))
    report(args, counts, runs, load_start)
    return 0


def report(args, counts, runs, load_start: float) -> None:
    print(f"# fanout: one synthetic book at {args.rate:,.0f} updates/s, shard "
          f"{'pinned to --cores ' + args.cores if args.cores else 'in the supervisor'}; "
          f"N blocking obclient readers (processes, each checking its sequence numbers); "
          f"{args.window_s} s windows, median of {args.rounds} interleaved rounds; "
          f"'paced': wake_gap_us_per_client = 40, 'unpaced': 0 (the default), '+slice': shard_slice_us = "
          f"{args.slice_us}; readers at nice "
          f"+{args.readers_nice}; wake {args.wake or 'default'}; cpu in CPUs; latency: "
          f"publish to reader, all readers' records; load {load_start:.2f} at start, "
          f"{os.getloadavg()[0]:.2f} at end")
    med = {key: {name: statistics.median(r[name] for r in runs[key]) for name in runs[key][0]}
           for key in counts}
    base = med[counts[0]]["publishes"]
    for key in counts:
        n, mode = key
        m = med[key]
        holes = sum(r["holes"] for r in runs[key])
        laps = sum(r["laps"] for r in runs[key])
        rounds = ", ".join(format(r["publishes"], ",.0f") for r in runs[key])
        print(f"fanout {n:4d} readers {mode:<11}  publishes/s "
              f"{m['publishes']:6,.0f} (x{m['publishes'] / base:4.2f})  updates/s "
              f"{m['updates']:6,.0f}  cpu observer {m['observer_cpu']:4.2f} waiting "
              f"{m['runq_wait']:4.2f} (loop {m['loop_wait_us']:5,.0f} us a run) readers "
              f"{m['readers_cpu']:4.2f} idle {m['idle']:4.2f}  wakes/reader/s "
              f"{m['reader_wakes']:5,.0f}  latency p50 {m['p50_us']:7,.0f} us p99 "
              f"{m['p99_us']:8,.0f} us  holes {holes}  lapped {laps}  (rounds {rounds})")
    paced_counts = [n for n, mode in counts if mode == "paced"]
    if len(paced_counts) > 1:
        top = (paced_counts[-1], "paced")
        ratio = med[top]["publishes"] / base
        lost = sum(r["holes"] + r["laps"] for r in runs[top])
        ok = ratio >= 0.9 and lost == 0
        print(f"target publishes/s at {top[0]} readers >= 0.9x at {counts[0][0]}, nothing lost or "
              f"lapped: x{ratio:.2f}, {lost} lost/lapped {'met' if ok else 'NOT met'}")
        for mode in ("paced+slice", "unpaced"):
            if (top[0], mode) in med:
                other = med[top[0], mode]
                print(f"at {top[0]} readers: publishes/s x{ratio:.2f} paced vs "
                      f"x{other['publishes'] / base:.2f} {mode}; readers cpu "
                      f"{med[top]['readers_cpu']:.2f} vs {other['readers_cpu']:.2f}")


if __name__ == "__main__":
    raise SystemExit(main())
