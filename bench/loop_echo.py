"""loom against its peers on one unix socket between two processes, side by side in one run.

Workloads (the peer is the same plain blocking process for every contender):
  pingpong  64-byte messages echoed back, both processes pinned to the same core
            (a round trip is one message; µs/msg is the round-trip time)
  bulk      a stream of 200k 100-byte messages, read 64 KiB at a time
  permsg    the same stream, read one 100-byte message per read call
Contenders: loom (io_uring), loom (epoll), asyncio and uvloop (each through its fastest idiom,
a BufferedProtocol reading into our buffer), gevent (its cooperative socket), and a plain
blocking recv_into loop (the floor). Each runs in its own process (gevent and uvloop change global
state); each figure is the best of `--repeat` runs, because this machine is shared.

One line per contender and workload: msgs/s, µs/msg, ratio to uvloop (msgs/s), and for loom
the net new memory blocks per message (tracemalloc, a second run after a warm-up). Then one
line per target of issue 2. Seeded (`--seed`), and nothing but stdlib + the bench extra.

    python bench/loop_echo.py [--repeat 3] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import subprocess
import sys
import time

MSG_BYTES = {"pingpong": 64, "bulk": 100, "permsg": 100}
COUNTS = {"pingpong": 20_000, "bulk": 200_000, "permsg": 200_000}
CONTENDERS = ["loom-io_uring", "loom-epoll", "asyncio", "uvloop", "gevent", "blocking"]
BULK_READ_BYTES = 65536


def now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(t0: tuple[float, float]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) since `t0`."""
    wall_s, cpu_s = now()
    return wall_s - t0[0], cpu_s - t0[1]


# -- the peer: echo for ping-pong, producer for the streams -------------------------------

def peer_main(workload: str, fd: int, count: int, seed: int) -> None:
    sock = socket.socket(fileno=fd)
    size = MSG_BYTES[workload]
    if workload == "pingpong":
        buf = bytearray(size)
        view = memoryview(buf)
        for _ in range(count + 1):               # +1: the start handshake
            got = 0
            while got < size:
                n = sock.recv_into(view[got:])
                if n == 0:
                    return
                got += n
            sock.sendall(buf)
        return
    rng = random.Random(seed)
    stream = rng.randbytes(size * count)
    go = sock.recv(1)                            # the contender is ready and timing
    assert go == b"g"
    view = memoryview(stream)
    for offset in range(0, len(stream), BULK_READ_BYTES):
        sock.sendall(view[offset:offset + BULK_READ_BYTES])
    sock.recv(1)                                 # wait for the contender to finish


# -- contenders: each returns (elapsed_s, messages) ---------------------------------------

def loom_run(backend: str, workload: str, sock, count: int, alloc: bool):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from observer import loom

    loop = loom.Loop(backend)
    result = {}

    def pingpong(n):
        buf = bytearray(65536)
        msg = bytes(64)
        for _ in range(n):
            loom.sendall(sock, msg)
            got = loom.recv_into(sock, buf)
            while got < 64:
                got += loom.recv_into(sock, memoryview(buf)[got:])

    def stream(total_bytes, read_bytes):
        """The same loop as the other contenders'; exact totals only when split for alloc."""
        buf = bytearray(BULK_READ_BYTES)
        got = 0
        if alloc:
            while got < total_bytes:
                got += loom.recv_into(sock, buf, min(read_bytes, total_bytes - got))
            return
        while got < total_bytes:
            got += loom.recv_into(sock, buf, read_bytes)

    def main():
        size = MSG_BYTES[workload]
        if workload == "pingpong":
            pingpong(1)
            t0 = now()
            pingpong(count)
            result["elapsed_s"] = since(t0)
            return
        read_bytes = BULK_READ_BYTES if workload == "bulk" else size
        loom.sendall(sock, b"g")
        t0 = now()
        if alloc:
            import tracemalloc
            warm = size * 2000
            stream(warm, read_bytes)
            tracemalloc.start()
            before = tracemalloc.take_snapshot()
            stream(size * count - warm, read_bytes)
            after = tracemalloc.take_snapshot()
            tracemalloc.stop()
            diff = after.compare_to(before, "lineno")
            result["blocks"] = sum(stat.count_diff for stat in diff)
        else:
            stream(size * count, read_bytes)
        result["elapsed_s"] = since(t0)
        loom.sendall(sock, b"d")

    if alloc and workload == "pingpong":
        def main_alloc():
            import tracemalloc
            pingpong(2000)
            tracemalloc.start()
            before = tracemalloc.take_snapshot()
            pingpong(count - 2000)
            after = tracemalloc.take_snapshot()
            tracemalloc.stop()
            result["blocks"] = sum(s.count_diff for s in after.compare_to(before, "lineno"))
            result["elapsed_s"] = (0.0, 0.0)
        loop.run(main_alloc)
    else:
        loop.run(main)
    loop.close()
    return result


def asyncio_run(use_uvloop: bool, workload: str, sock, count: int):
    """asyncio and uvloop through their fastest idiom, a BufferedProtocol: the loop reads
    straight into our buffer; for `permsg` the buffer is one message long, so one read per
    message, as loom does it."""
    import asyncio
    if use_uvloop:
        import uvloop
        runner = uvloop.run
    else:
        runner = asyncio.run
    size = MSG_BYTES[workload]
    total = size * count

    class Bench(asyncio.BufferedProtocol):
        def __init__(self, done):
            self.done = done
            self.buf = bytearray(65536)
            self.view = memoryview(self.buf)
            self.read_view = self.view[:size] if workload == "permsg" else self.view
            self.got = 0                 # bytes this round trip / this stream
            self.trips = 0
            self.t0 = (0.0, 0.0)
            self.transport = None
            self.msg = bytes(64)

        def connection_made(self, transport):
            self.transport = transport
            if workload == "pingpong":
                transport.write(self.msg)
            else:
                transport.write(b"g")
                self.t0 = now()

        def get_buffer(self, sizehint):
            return self.read_view

        def buffer_updated(self, nbytes):
            self.got += nbytes
            if workload != "pingpong":
                if self.got >= total and not self.done.done():
                    self.done.set_result(since(self.t0))
                    self.transport.write(b"d")
                return
            if self.got < 64:
                return
            self.got = 0
            self.trips += 1
            if self.trips == 1:
                self.t0 = now()
            if self.trips > count:
                self.done.set_result(since(self.t0))
                return
            self.transport.write(self.msg)

        def connection_lost(self, exc):
            if not self.done.done():
                self.done.set_exception(ConnectionError("peer closed early"))

    async def main():
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        transport, _ = await loop.create_unix_connection(lambda: Bench(done), sock=sock)
        elapsed = await done
        await asyncio.sleep(0)
        transport.close()
        return elapsed

    return {"elapsed_s": runner(main())}


def gevent_run(workload: str, sock, count: int):
    from gevent import socket as gsocket
    gsock = gsocket.socket(fileno=sock.detach())
    return {"elapsed_s": plain_loop(gsock, workload, count)}


def plain_loop(sock, workload: str, count: int) -> float:
    """The blocking floor; with a gevent socket the same code runs on gevent's hub."""
    size = MSG_BYTES[workload]
    buf = bytearray(65536)
    view = memoryview(buf)
    if workload == "pingpong":
        msg = bytes(64)
        t0 = (0.0, 0.0)
        for i in range(count + 1):
            if i == 1:
                t0 = now()
            sock.sendall(msg)
            got = sock.recv_into(buf)
            while got < 64:
                got += sock.recv_into(view[got:])
        return since(t0)
    read_bytes = BULK_READ_BYTES if workload == "bulk" else size
    sock.sendall(b"g")
    t0 = now()
    total = size * count
    got = 0
    while got < total:
        got += sock.recv_into(buf, read_bytes)
    elapsed = since(t0)
    sock.sendall(b"d")
    return elapsed


def contender_main(name: str, workload: str, fd: int, count: int, alloc: bool) -> None:
    sock = socket.socket(fileno=fd)
    if name.startswith("loom-"):
        result = loom_run(name[5:], workload, sock, count, alloc)
    elif name in ("asyncio", "uvloop"):
        result = asyncio_run(name == "uvloop", workload, sock, count)
    elif name == "gevent":
        result = gevent_run(workload, sock, count)
    else:
        result = {"elapsed_s": plain_loop(sock, workload, count)}
    print(json.dumps(result))


# -- orchestration ------------------------------------------------------------------------

def run_pair(name: str, workload: str, count: int, seed: int, alloc: bool = False) -> dict:
    cores = sorted(os.sched_getaffinity(0))
    if workload == "pingpong":
        peer_cores = contender_cores = [cores[-1]]           # one core: the target
    else:
        peer_cores, contender_cores = [cores[0]], [cores[-1]]
    a, b = socket.socketpair()
    here = os.path.abspath(__file__)
    common = ["--workload", workload, "--count", str(count), "--seed", str(seed)]
    peer = subprocess.Popen(
        [sys.executable, here, "--peer", "--fd", str(b.fileno()), "--cores",
         ",".join(map(str, peer_cores))] + common, pass_fds=[b.fileno()])
    cmd = [sys.executable, here, "--contender", name, "--fd", str(a.fileno()), "--cores",
           ",".join(map(str, contender_cores))] + common + (["--alloc"] if alloc else [])
    try:
        out = subprocess.run(cmd, pass_fds=[a.fileno()], capture_output=True, text=True,
                             timeout=300)
    finally:
        a.close()
        b.close()
        try:
            peer.wait(timeout=60)
        except subprocess.TimeoutExpired:
            peer.kill()
            peer.wait()
    if out.returncode != 0:
        raise RuntimeError(f"{name} {workload} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def available(name: str) -> bool:
    probe = {"uvloop": "import uvloop", "gevent": "import gevent"}.get(name)
    if name == "loom-io_uring":
        probe = ("from observer.loom.backend import unavailable_reason; "
                 "import sys; sys.exit(unavailable_reason('io_uring') is not None)")
    if probe is None:
        return True
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    return subprocess.run([sys.executable, "-c", probe], cwd=root,
                          capture_output=True).returncode == 0


def orchestrate(repeat: int, seed: int, scale: float, workloads, wanted) -> None:
    contenders = [c for c in wanted if available(c)]
    missing = sorted(set(wanted) - set(contenders))
    if missing:
        print(f"# not installed or not available here (pip install -e '.[bench]'): {missing}")
    table: dict[tuple[str, str], float] = {}       # msgs/s (best wall time)
    cpu_table: dict[tuple[str, str], float] = {}   # contender CPU seconds per message
    for workload in workloads:
        count = max(1000, int(COUNTS[workload] * scale))
        best = {name: float("inf") for name in contenders}
        best_cpu = dict(best)
        for _ in range(repeat):                 # interleaved, so noise hits everyone alike
            for name in contenders:
                wall_s, cpu_s = run_pair(name, workload, count, seed)["elapsed_s"]
                best[name] = min(best[name], wall_s)
                best_cpu[name] = min(best_cpu[name], cpu_s)
        for name in contenders:
            table[(workload, name)] = count / best[name]
            cpu_table[(workload, name)] = best_cpu[name] / count
        uv = table.get((workload, "uvloop"))
        for name in contenders:
            rate = table[(workload, name)]
            ratio = f"{rate / uv:5.2f}x" if uv else "  n/a"
            extra = ""
            if name.startswith("loom-"):
                blocks = run_pair(name, workload, count, seed, alloc=True)["blocks"]
                extra = f"  net_blocks/msg={blocks / count:.4f}"
            cpu_us = cpu_table[(workload, name)] * 1e6
            cpu_ratio = (f"{cpu_table[(workload, 'uvloop')] * 1e6 / cpu_us:5.2f}x" if uv
                         else "  n/a")
            print(f"{workload:8s} {name:14s} {rate:12,.0f} msgs/s {1e6 / rate:8.2f} us/msg "
                  f"{ratio} uvloop | cpu {cpu_us:6.3f} us/msg {cpu_ratio} uvloop{extra}",
                  flush=True)
    print("# targets on wall-clock msgs/s:")
    report_targets(table, contenders, workloads)
    print("# the same targets on contender CPU per message (less sensitive to a busy machine):")
    report_targets({key: 1.0 / value for key, value in cpu_table.items()}, contenders, workloads)


def report_targets(table, contenders, workloads) -> None:
    looms = [c for c in contenders if c.startswith("loom-")]
    if "uvloop" not in contenders or not looms:
        return
    for workload in workloads:
        best = max(looms, key=lambda c: table[(workload, c)])
        rate = table[(workload, best)]
        line = f"target {workload:8s} best={best}: {rate / table[(workload, 'uvloop')]:.2f}x uvloop"
        line += " (>=0.95)"
        if "gevent" in contenders:
            line += f", {rate / table[(workload, 'gevent')]:.2f}x gevent (>=1.0)"
        if workload == "permsg" and "blocking" in contenders:
            line += f", floor/loom {table[(workload, 'blocking')] / rate:.2f} (<=1.1)"
        if workload == "pingpong":
            gap_us = 1e6 / rate - 1e6 / table[(workload, "uvloop")]
            line += f", {gap_us:+.2f} us/round trip vs uvloop (<=3)"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", action="store_true")
    parser.add_argument("--contender")
    parser.add_argument("--workload", default="pingpong")
    parser.add_argument("--fd", type=int)
    parser.add_argument("--count", type=int)
    parser.add_argument("--cores")
    parser.add_argument("--alloc", action="store_true")
    parser.add_argument("--seed", type=int, default=20261122)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a tenth of the messages")
    parser.add_argument("--workloads", default="pingpong,bulk,permsg")
    parser.add_argument("--contenders", default=",".join(CONTENDERS))
    args = parser.parse_args()
    if args.cores:
        os.sched_setaffinity(0, {int(c) for c in args.cores.split(",")})
    if args.peer:
        peer_main(args.workload, args.fd, args.count, args.seed)
    elif args.contender:
        contender_main(args.contender, args.workload, args.fd, args.count, args.alloc)
    else:
        orchestrate(args.repeat, args.seed, 0.1 if args.quick else 1.0,
                    args.workloads.split(","), args.contenders.split(","))


if __name__ == "__main__":
    main()
