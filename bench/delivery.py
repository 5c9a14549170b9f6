"""Delivery: observer publish -> obclient wake-up with a consistent top of book, against peers.

One run, side by side, one line per contender, ratios against the raw eventfd wake-up measured
in the same run. Every contender carries the same top-of-book record (the ring record body of
obproto.layout: book index, kind, flags, exponents, sequence, update id, three timestamps, best
bid and ask) from a writer process to a reader process; latency is the reader's clock after it
holds the record minus the writer's clock just before it published (CLOCK_REALTIME, one host).

Contenders (the writer paces messages `--interval-us` apart, so the reader is asleep when one
arrives, which is the case blocking delivery is about):
  raw eventfd+epoll       timestamp word in shared memory, eventfd write, reader in epoll(ET)
  raw shm spin            the same words, reader spinning on them (the busy-poll floor)
  observer blocking       what a shard does per message: ShardWriter.wake_ahead (before the
                          parse), publish, flush -> UpdateFollower.wait_next (epoll; spins
                          while the shard says a publish is on its way)
  observer no wake-ahead  the same without wake_ahead: the flush's write is the only wake-up
  observer io_uring wake  with wake-ahead, the eventfd writes done by an io_uring worker
  observer blocking+hostile  `observer blocking` while a hostile client of the same segment
                          attacks its own wake fd in a loop (reads, saturating writes, blocking
                          mode, epoll_wait, its own eventfd added and written): the victim's
                          p50/p99 beside the row without it
  observer busy-poll      the same writer, wake-ahead off -> UpdateFollower.spin_next (no
                          syscalls)
  pyzmq ipc PUB/SUB       the record packed with struct, blocking recv
  iceoryx2 blocking       ctypes record over publish-subscribe + event notifier, Listener wait
  iceoryx2 busy-poll      the same -> Subscriber.receive in a loop
Then the busy-poll contenders again on a hot feed (`--hot-interval-us` apart, the writer spinning
between messages, as a shard does at tens of thousands of updates/s: nothing goes cold, which is
the case a pinned busy-polling client is for). Then publishes/s back to back (writer side, one reader draining), and the writer's cost per
message (wake_ahead, publish, flush) with 1, 10 and 100 reader processes attached and waiting
on their own wake fds (an epoll each on the shard's eventfd, as clients get them), for each wake
mode (observer/shm/wake.py; `--cost-rounds` interleaved passes,
medians).

The raw contenders hold one value, so a reader that wakes late sees only the newest one; a
message overwritten that way is timed until the reader saw a newer one (timing only the messages
it caught would flatter the baseline). "missing" counts records never received. Every row also
gives "visible": reader clock minus the writer's clock when its publish call returned (the data
readable, before `flush` or iceoryx2's `notify`), i.e. delivery without the writer's own work of
building the record, which is cold (5-10 us) after the writer slept: the targets are printed
for both.

Writer pinned to CPU 0, readers to CPU 1 when the machine has two. Seeded; `make bench` runs it.
The machine's load average is printed: on a shared 2-vCPU machine, numbers taken under load are
not comparable with quiet ones (ratios within one run still are, roughly).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from delivery_peers import (TOKEN, Iox, IoxSpin, Observer, ObserverFlushOnly,  # noqa: E402
                            ObserverSpin, ObserverUnderAttack, ObserverUring, Raw, RawSpin,
                            TopBook, Zmq, pin)
from delivery_peers import BookDesc, Segment, SegmentReader  # noqa: E402

SEED = 20261122
WARMUP_N = 200
BURST_N = 100_000  # back-to-back publishes for the warm writer cost (about 50 ms compiled:
# long enough that one interruption by other work barely moves its CPU per publish)


# -- running one contender -------------------------------------------------------------------


def run_latency(contender, messages_n: int, interval_us: int, rng: random.Random, hot: bool = False):
    """Paced one-way latency. Returns (latency_ns, after_publish_ns or None, missing count).

    `hot`: the writer spins between messages instead of sleeping, so its CPU never idles.

    `after_publish_ns` (observer only): reader clock minus the writer's clock when `publish`
    returned, before `flush`: the delivery part that is not the publish call itself.
    """
    contender.prepare()
    ready_r, ready_w = os.pipe()
    out_r, out_w = os.pipe()
    total_n = WARMUP_N + messages_n
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        os.close(out_r)
        _reader_child(contender, total_n, ready_w, out_w)
    os.close(ready_w)
    os.close(out_w)
    visible_ns = np.zeros(total_n + 1, dtype=np.int64)
    try:
        pin(0)
        assert os.read(ready_r, 1) == b"r"
        contender.writer_open()
        gaps_s = [interval_us * (0.5 + rng.random()) / 1e6 for _ in range(total_n)]
        pause = _spin if hot else _pause
        for i in range(1, total_n + 1):
            pause(gaps_s[i - 1])
            visible_ns[i] = contender.send(i) or 0
        data = _read_all(out_r)
    finally:
        os.waitpid(pid, 0)
        os.close(ready_r)
        os.close(out_r)
        contender.close()
    recv_ns, sent_ns = np.frombuffer(data, dtype=np.int64).reshape(2, total_n + 1).copy()
    if getattr(contender, "coalescing", False):
        # One shared value: a message overwritten before the reader looked counts as delivered
        # when the reader saw a newer one (else the baseline would only time the lucky ones).
        recv_ns = _backfill(recv_ns)
        sent_ns, visible_ns = visible_ns, np.zeros_like(visible_ns)  # send() gave its stamp
    got = recv_ns[WARMUP_N + 1:] > 0
    lat = (recv_ns - sent_ns)[WARMUP_N + 1:][got]
    after = None
    if visible_ns[-1]:
        after = (recv_ns - visible_ns)[WARMUP_N + 1:][got]
    return lat, after, messages_n - int(got.sum())


def _backfill(recv_ns: np.ndarray) -> np.ndarray:
    """recv_ns[i] := the first receive time of any message j >= i (0 if none was received)."""
    out = recv_ns.copy()
    next_ns = 0
    for i in range(len(out) - 1, 0, -1):
        if out[i] > 0:
            next_ns = out[i]
        else:
            out[i] = next_ns
    return out


def _pause(gap_s: float) -> None:
    # Sleep most of the gap (so both CPUs may go idle, as between real updates), spin the rest.
    end = time.perf_counter() + gap_s
    if gap_s > 200e-6:
        time.sleep(gap_s - 150e-6)
    _spin_until(end)


def _spin(gap_s: float) -> None:
    _spin_until(time.perf_counter() + gap_s)


def _spin_until(end: float) -> None:
    while time.perf_counter() < end:
        pass


def _reader_child(contender, total_n: int, ready_w: int, out_w: int) -> None:
    code = 1
    try:
        pin(1)
        contender.reader_open()
        stamps = np.zeros((2, total_n + 1), dtype=np.int64)  # preallocated: no growth
        recv_ns, sent_ns = stamps
        os.write(ready_w, b"r")
        last = 0
        deadline = time.monotonic() + 60 + total_n * 0.002
        while last < total_n and time.monotonic() < deadline:
            got = contender.receive(0.5)
            if got is None:
                continue
            now_ns = time.time_ns()
            i, ts_ns = got
            recv_ns[i] = now_ns
            sent_ns[i] = ts_ns
            last = i
        os.write(out_w, stamps.tobytes())
        contender.reader_close()
        code = 0
    finally:
        os._exit(code)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def run_throughput(contender, messages_n: int) -> float:
    """Back-to-back publishes per second on the writer side, one reader draining."""
    contender.prepare()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            pin(1)
            contender.reader_open()
            os.write(ready_w, b"r")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                got = contender.receive(0.2)
                if got is not None and got[0] >= messages_n:
                    break
            contender.reader_close()
            code = 0
        finally:
            os._exit(code)
    os.close(ready_w)
    try:
        pin(0)
        assert os.read(ready_r, 1) == b"r"
        contender.writer_open()
        for i in range(1, 201):
            contender.send(i)
        t0 = time.perf_counter_ns()
        for i in range(201, messages_n + 1):
            contender.send(i)
        elapsed_ns = time.perf_counter_ns() - t0
    finally:
        os.waitpid(pid, 0)
        os.close(ready_r)
        contender.close()
    return (messages_n - 200) / (elapsed_ns / 1e9)


# -- the writer's cost with many readers -----------------------------------------------------


def run_publish_cost(readers_n: int, publishes_n: int, interval_us: int, wake: str,
                     waits_on: str = "wake_fd"):
    """Median ns of publish() and of flush() with `readers_n` reader processes waiting, each on
    its own wake fd (as clients are handed) or, `waits_on="eventfd"`, on the shard's eventfd
    itself (how clients waited before wake fds: the comparison)."""
    segment = Segment.create(f"obbench-cost-{TOKEN}-{readers_n}",
                             [BookDesc("bench", "BTCUSD", "x", 0)], 1, 8, 4096)
    segment.seal()
    fd = segment.reader_fd()
    ready_r, ready_w = os.pipe()
    pids = []
    try:
        for _ in range(readers_n):
            pid = os.fork()
            if pid == 0:
                os.close(ready_r)
                _waiting_reader(fd, segment, ready_w, waits_on)
            pids.append(pid)
        os.close(ready_w)
        ready_w = -1
        got = b""
        while len(got) < readers_n:
            got += os.read(ready_r, readers_n)
        pin(0)
        segment.set_clients(readers_n)  # as the supervisor does, for wake mode auto
        writer = segment.writer(0, wake=wake)
        writer.heartbeat()  # where the writer reads it
        return _time_publishes(writer, publishes_n, interval_us)
    finally:
        segment.mark_closed()
        writer = segment.writer(0)
        writer.publish(0, TopBook())
        writer.flush()  # every reader wakes, sees the segment closed, and exits
        for pid in pids:
            os.waitpid(pid, 0)
        os.close(ready_r)
        if ready_w >= 0:
            os.close(ready_w)
        os.close(fd)
        segment.close()


def _waiting_reader(fd: int, segment, ready_w: int, waits_on: str) -> None:
    code = 1
    try:
        pin(1)
        waits = [segment.wake_fd(0)] if waits_on == "wake_fd" else segment.eventfds
        reader = SegmentReader(fd, waits)
        follower = reader.follow()
        os.write(ready_w, b"r")
        while not reader.closed:
            if follower.wait(5.0):
                follower.poll()
        code = 0
    finally:
        os._exit(code)


def _time_publishes(writer, publishes_n: int, interval_us: int):
    """Medians of a message's three writer steps, wake_ahead(), publish() and flush(), in wall
    time and in this thread's CPU time: (ahead, publish, flush) wall, then the same in CPU,
    then the warm burst's CPU per publish.

    The CPU-time figures (CLOCK_THREAD_CPUTIME_ID, kernel time of the eventfd writes included)
    leave out preemption by other work on a shared machine; each read costs a syscall, the
    same in every configuration.
    """
    book = TopBook()
    samples = np.zeros((6, publishes_n), dtype=np.int64)
    wall, cpu = time.perf_counter_ns, time.thread_time_ns
    for i in range(WARMUP_N + publishes_n):
        _pause(interval_us / 1e6)
        book.update_id = i + 1
        c0, t0 = cpu(), wall()
        writer.wake_ahead()
        t1, c1 = wall(), cpu()
        writer.publish(0, book)
        t2, c2 = wall(), cpu()
        writer.flush()
        t3, c3 = wall(), cpu()
        if i >= WARMUP_N:
            samples[:, i - WARMUP_N] = (t1 - t0, t2 - t1, t3 - t2, c1 - c0, c2 - c1, c3 - c2)
    medians = tuple(float(v) for v in np.median(samples, axis=1))
    return medians + (_burst_cpu_ns(writer, book),)


def _burst_cpu_ns(writer, book, publishes_n: int = BURST_N) -> float:
    """CPU ns per publish back to back (warm), readers asleep: the writer's own work."""
    c0 = time.thread_time_ns()
    for _ in range(publishes_n):
        writer.publish(0, book)
    burst_ns = (time.thread_time_ns() - c0) / publishes_n
    writer.flush()
    return burst_ns


WAKES = ("auto", "eventfd", "io_uring")
DIRECT = "eventfd*"   # wake eventfd, readers waiting on the eventfd itself (the old hand-out)


def measure_costs(readers: list[int], args) -> dict[tuple[str, int], tuple]:
    """Writer cost per (wake mode, reader count): interleaved passes, the median of each. With
    `--cost-eventfd`, also per reader count with readers on the eventfd itself, wake eventfd
    (keyed "eventfd*"): the kernel's fan-out before and after wake fds, side by side."""
    keys = [(wake, n) for wake in WAKES for n in readers]
    if args.cost_eventfd:
        keys += [(DIRECT, n) for n in readers]
    passes: dict[tuple[str, int], list] = {key: [] for key in keys}
    for _ in range(args.cost_rounds):
        for wake, n in keys:
            waits_on, mode = ("eventfd", "eventfd") if wake == DIRECT else ("wake_fd", wake)
            passes[wake, n].append(run_publish_cost(n, args.cost_publishes,
                                                    args.cost_interval_us, mode, waits_on))
    return {key: tuple(float(v) for v in np.median(np.array(runs), axis=0))
            for key, runs in passes.items()}


# -- main ------------------------------------------------------------------------------------


def cleanup_iceoryx2() -> None:
    """Remove what dead iceoryx2 nodes (ours, all exited by now) left in shared memory."""
    try:
        import iceoryx2 as iox
    except ImportError:
        return
    node = iox.NodeBuilder.new().create(iox.ServiceType.Ipc)
    node.try_cleanup_dead_nodes()
    del node


def percentiles_us(lat_ns: np.ndarray) -> tuple[float, float, float]:
    p50, p99, p999 = np.percentile(lat_ns, [50, 99, 99.9])
    return p50 / 1e3, p99 / 1e3, p999 / 1e3


def available(contender) -> str | None:
    module = {Zmq: "zmq", Iox: "iceoryx2", IoxSpin: "iceoryx2"}.get(type(contender))
    if module is None:
        return None
    try:
        __import__(module)
    except ImportError:
        return f"{module} not installed (pip install -e '.[bench]')"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=6000)
    parser.add_argument("--interval-us", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3, help="passes over all contenders")
    parser.add_argument("--hot-interval-us", type=int, default=20,
                        help="busy-poll contenders again, this far apart, the writer spinning")
    parser.add_argument("--throughput-messages", type=int, default=20000)
    parser.add_argument("--cost-publishes", type=int, default=1000)
    parser.add_argument("--cost-interval-us", type=int, default=2000,
                        help="publishes this far apart, so woken readers are asleep again "
                             "(100 readers take about 1 ms to wake and poll on one CPU)")
    parser.add_argument("--readers", default="1,10,100")
    parser.add_argument("--cost-rounds", type=int, default=3,
                        help="interleaved passes over the reader counts; medians of passes")
    parser.add_argument("--cost-eventfd", action="store_true",
                        help="also time the writer with readers on the eventfd itself (the "
                             "hand-out before wake fds), wake eventfd, keyed 'eventfd*'")
    parser.add_argument("--only", default="", help="comma-separated contender names (debugging)")
    args = parser.parse_args()
    rng = random.Random(SEED)
    args.load_at_start = os.getloadavg()[0]
    contenders = [c for c in (Raw(), RawSpin(), Observer(), ObserverUnderAttack(),
                              ObserverFlushOnly(), ObserverUring(), ObserverSpin(), Zmq(), Iox(),
                              IoxSpin())
                  if available(c) is None
                  and (not args.only or c.name in args.only.split(",") or c.name == Raw.name)]
    skipped = [c for c in (Zmq(), Iox()) if available(c) is not None]
    lat = {c.name: [] for c in contenders}
    after = {c.name: [] for c in contenders}
    missing = {c.name: 0 for c in contenders}
    for _ in range(args.rounds):  # interleaved passes, so machine noise hits all alike
        for c in contenders:
            got, got_after, n_missing = run_latency(c, args.messages // args.rounds,
                                                    args.interval_us, rng)
            lat[c.name].append(got)
            if got_after is not None:
                after[c.name].append(got_after)
            missing[c.name] += n_missing
    hot = run_hot([c for c in contenders if c.name in HOT_NAMES], args, rng)
    rates = {c.name: run_throughput(c, args.throughput_messages) for c in contenders}
    costs = measure_costs([int(n) for n in args.readers.split(",")], args)
    cleanup_iceoryx2()
    p50, p50_visible, p99 = report(args, contenders, lat, after, missing, rates, skipped)
    hot_p50 = report_hot(args, hot)
    report_costs(costs, args.cost_interval_us)
    report_targets(p50, p50_visible, p99, costs, hot_p50)


HOT_NAMES = (RawSpin.name, ObserverSpin.name, IoxSpin.name)


def run_hot(contenders, args, rng):
    """{name: (latency_ns, visible_ns or None)} on a hot feed, interleaved rounds."""
    got = {c.name: ([], []) for c in contenders}
    for _ in range(args.rounds):
        for c in contenders:
            lat, after, _ = run_latency(c, args.messages // args.rounds, args.hot_interval_us,
                                        rng, hot=True)
            got[c.name][0].append(lat)
            if after is not None:
                got[c.name][1].append(after)
    return got


def report_hot(args, hot) -> dict:
    """Print the hot-feed lines; return {name: (p50, visible p50)}."""
    print(f"# busy-poll on a hot feed: messages {args.hot_interval_us} us apart +-50%, the writer "
          f"spinning between them (no CPU idles); x_raw_spin against the raw shm spin")
    if RawSpin.name not in hot:
        return {}
    raw_p50 = percentiles_us(np.concatenate(hot[RawSpin.name][0]))[0]
    p50s = {}
    for name, (lat, after) in hot.items():
        p50, p99, p999 = percentiles_us(np.concatenate(lat))
        visible = percentiles_us(np.concatenate(after or lat))
        p50s[name] = p50, visible[0]
        print(f"{name + ' (hot)':<28} p50 {p50:8.2f}  p99 {p99:8.2f}  p99.9 {p999:8.2f}  "
              f"x_raw_spin {p50 / raw_p50:5.2f}  visible p50 {visible[0]:6.2f} p99 {visible[1]:7.2f}")
    return p50s


def report(args, contenders, lat, after, missing, rates, skipped):
    """Print a line per contender; return the p50s from the publish call and from visible,
    and the p99s from the publish call."""
    print(f"# delivery, one run: {args.messages} paced messages per contender "
          f"({args.interval_us} us apart +-50%), {args.rounds} interleaved rounds, seed {SEED}, "
          f"load average {args.load_at_start:.2f} at start; one-way latency in us, from the writer's "
          f"clock before its publish call; 'visible': from its clock when that call returned "
          f"(the data readable, before any wake-up signal; pyzmq and the raw rows have no "
          f"separate step, so the same)")
    p50s, p50s_visible, p99s = {}, {}, {}
    raw_p50 = percentiles_us(np.concatenate(lat[Raw.name]))[0]
    for c in contenders:
        p50, p99, p999 = percentiles_us(np.concatenate(lat[c.name]))
        p50s[c.name], p99s[c.name] = p50, p99
        visible = percentiles_us(np.concatenate(after[c.name] or lat[c.name]))
        p50s_visible[c.name] = visible[0]
        print(f"{c.name:<22} p50 {p50:8.2f}  p99 {p99:8.2f}  p99.9 {p999:8.2f}  "
              f"x_raw_eventfd {p50 / raw_p50:5.2f}  visible p50 {visible[0]:6.2f} "
              f"p99 {visible[1]:7.2f} (x{visible[0] / raw_p50:4.2f})  "
              f"publishes/s {rates[c.name]:9,.0f}  missing {missing[c.name]}")
    for c in skipped:
        print(f"{c.name:<22} skipped: {available(c)}")
    return p50s, p50s_visible, p99s


def report_costs(costs, interval_us: int) -> None:
    print(f"# writer cost per message: medians of {interval_us} us paced wake_ahead(), publish() "
          f"and flush() calls (cold; 'message' is their sum), and CPU per publish in a "
          f"{BURST_N}-publish burst (warm); per wake mode, ratios against 1 reader; readers "
          f"wait on their own wake fds, or for 'eventfd*' on the shard's eventfd itself")
    for (wake, readers_n), cost in costs.items():
        base = costs[wake, min(n for w, n in costs if w == wake)]
        for label, k in (("wall", 0), ("cpu", 3)):
            ahead, publish, flush = cost[k:k + 3]
            message, base_message = sum(cost[k:k + 3]), sum(base[k:k + 3])
            print(f"writer cost, wake {wake:<8} {readers_n:3d} readers waiting, {label:<4}  "
                  f"ahead {ahead / 1e3:6.2f} us  publish {publish / 1e3:6.2f} us "
                  f"(x{publish / base[k + 1]:4.2f})  flush {flush / 1e3:6.2f} us  message "
                  f"{message / 1e3:6.2f} us (x{message / base_message:4.2f})"
                  + (f"  warm publish {cost[6] / 1e3:5.2f} us (x{cost[6] / base[6]:4.2f})"
                     if label == "cpu" else ""))


def report_targets(p50, p50_visible, p99, costs, hot_p50) -> None:
    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    raw = p50[Raw.name]
    if Observer.name in p99 and ObserverUnderAttack.name in p99:
        extra_us = p99[ObserverUnderAttack.name] - p99[Observer.name]
        print(f"target victim p99 with a hostile client <= 1 ms beyond without: "
              f"{p99[ObserverUnderAttack.name]:.2f} vs {p99[Observer.name]:.2f} us "
              f"(+{extra_us:.2f}) {verdict(extra_us <= 1000.0)}")
    for label, table in (("from the publish call", p50), ("from visible", p50_visible)):
        block = table.get(Observer.name)
        if block is not None:
            print(f"target blocking p50 <= 1.2x raw eventfd ({label}): x{block / raw:.2f} "
                  f"{verdict(block <= 1.2 * raw)}")
            peers = [table[n] for n in (Zmq.name, Iox.name) if n in table]
            if peers:
                peers_text = ", ".join(f"{p:.2f}" for p in peers)
                print(f"target blocking p50 below pyzmq and iceoryx2 blocking ({label}): "
                      f"{block:.2f} vs {peers_text} {verdict(all(block < p for p in peers))}")
        spin = table.get(ObserverSpin.name)
        if spin is not None:
            print(f"target busy-poll p50 < 2 us ({label}): {spin:.2f} {verdict(spin < 2.0)}")
    if ObserverSpin.name in hot_p50:
        for label, k in (("from the publish call", 0), ("from visible", 1)):
            spin = hot_p50[ObserverSpin.name][k]
            print(f"target busy-poll p50 < 2 us (hot feed, {label}): {spin:.2f} {verdict(spin < 2.0)}")
    for wake in WAKES:
        if (wake, 1) not in costs or (wake, 100) not in costs:
            continue
        one, many = costs[wake, 1], costs[wake, 100]
        for label, k in (("wall", 0), ("cpu", 3)):
            ratio = many[k + 1] / one[k + 1]
            whole = sum(many[k:k + 3]) / sum(one[k:k + 3])
            print(f"target publish cost at 100 readers <= 1.2x at 1 (wake {wake}, {label}, "
                  f"cold): publish x{ratio:.2f} {verdict(ratio <= 1.2)}, whole message "
                  f"(wake_ahead+publish+flush) x{whole:.2f} {verdict(whole <= 1.2)}")
        warm = many[6] / one[6]
        print(f"target publish cost at 100 readers <= 1.2x at 1 (wake {wake}, warm burst): "
              f"x{warm:.2f} {verdict(warm <= 1.2)}")


if __name__ == "__main__":
    main()

