"""bench/relay.py: what relaying adds between an observer's publish and a reader on this host.

Contenders, each run in turn against the same observer (synthetic books) in one run:
  local obclient   the floor: this process follows the ring and copies the book (depth 10)
  obrelay -> NATS  the real obrelay process, a real nats-server, a nats-py subscriber
  relay -> Redis   obrelay's own loop (obrelay.relay.Relay) with a Redis pub/sub sink, a real
                   redis-server, a redis.asyncio subscriber: the same path through Redis, what a
                   cryptofeed user wires up. Skipped with the reason when redis-server or the
                   `redis` package (bench extra) is missing.

1. Latency: one book at LAT_RATE_HZ; for every message, the subscriber's clock at receipt
   minus the record's `publish_ts_ns` (the observer's clock at publish, same host), p50/p99 in
   microseconds, and the ratio to the local floor.
2. Rate: BOOKS_N books at increasing rates; at each step each contender runs RATE_STEP_S and
   the subscriber counts the observer publishes folded into others (book_seq steps > 1). The
   result is the highest observer publish rate carried with none folded. The CPU time of the
   relaying process per message (the reader's own, for local) is printed too: unlike the rate,
   it hardly depends on what else the machine runs.

One line per contender and phase; the load average is printed, as the machine is shared.
    python bench/relay.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "relay"))
sys.path.insert(0, str(ROOT / "tests"))          # kit: the test helpers

import obclient  # noqa: E402
from natskit import NatsServer, free_port, nats_server_binary  # noqa: E402
from obsim.observerproc import ObserverProcess, unique_name  # noqa: E402
from kit.procs import wait_until  # noqa: E402
from obproto import relay as wire  # noqa: E402

DEPTH = 10
LAT_RATE_HZ = 200.0
LAT_S = 6.0
BOOKS_N = 4
RATES_HZ = (250, 500, 1000, 2000, 4000)      # per book
RATE_STEP_S = 3.0
WARM_S = 1.0                                 # messages of the first second are not counted
START_TIMEOUT_S = 60.0


def observer_process(workdir: str, rate_hz: float, books_n: int) -> ObserverProcess:
    feeds = [arg for i in range(books_n) for arg in ("--feed", f"synthetic:B{i}USD")]
    return ObserverProcess(None, workdir=workdir, extra_args=[
        *feeds, "--rate", str(rate_hz), "--seed", "3", "--depth", "20"])


class Tally:
    """Per message: latency from publish_ts_ns, and observer publishes folded (book_seq)."""

    def __init__(self, cpu_s=time.process_time):
        self.warm_until_ns = None     # set by the first message: counting starts WARM_S later
        self.end_s = None
        self.cpu_s = cpu_s            # the CPU seconds of the process doing the relaying
        self.cpu_start_s = self.cpu_end_s = 0.0
        self.lat_ns: list[int] = []
        self.folded = 0
        self.first_seq: dict[str, int] = {}
        self.last_seq: dict[str, int] = {}

    def arm(self, seconds: float) -> None:
        """The first message arrived (the relay is up): count from WARM_S on, `seconds` long."""
        if self.warm_until_ns is None:
            self.warm_until_ns = time.time_ns() + int(WARM_S * 1e9)
            self.end_s = time.monotonic() + WARM_S + seconds

    def done(self) -> bool:
        return self.end_s is not None and time.monotonic() > self.end_s

    def add(self, name: str, book_seq: int, publish_ts_ns: int, recv_ns: int) -> None:
        if publish_ts_ns < self.warm_until_ns:
            return
        if not self.lat_ns:
            self.cpu_start_s = self.cpu_s()
        last = self.last_seq.get(name)
        if last is None:
            self.first_seq[name] = book_seq
        elif book_seq > last + 1:
            self.folded += book_seq - last - 1
        if last is None or book_seq > last:
            self.last_seq[name] = book_seq
        self.lat_ns.append(recv_ns - publish_ts_ns)

    def stop(self) -> None:
        self.cpu_end_s = self.cpu_s()

    def cpu_us_per_msg(self) -> float:
        return (self.cpu_end_s - self.cpu_start_s) * 1e6 / max(1, len(self.lat_ns))

    def publishes(self) -> int:
        """Observer publishes in the counted window (first to last message of each book)."""
        return sum(self.last_seq[n] - self.first_seq[n] + 1 for n in self.last_seq)


# -- contenders ----------------------------------------------------------------------------------

class Local:
    name = "local obclient"

    def unavailable(self):
        return None

    def run(self, obs: ObserverProcess, seconds: float, tally: Tally) -> None:
        with obclient.connect(obs.socket_path, stale_after_s=30) as client:
            names = {b.book_index: b.name for b in client.books()}
            tally.arm(seconds)
            for update in client.updates(None, timeout_s=START_TIMEOUT_S):
                client.snapshot(names[update.book_index], DEPTH)   # what a relay reads too
                tally.add(names[update.book_index], update.book_seq, update.publish_ts_ns,
                          time.time_ns())
                if tally.done():
                    break
            tally.stop()


class Nats:
    name = "obrelay -> NATS"

    def __init__(self, root: Path):
        self.root = root
        self.server = None

    def unavailable(self):
        return None if nats_server_binary() else "nats-server not installed (test extra)"

    def start(self):
        self.server = NatsServer(self.root, "nats").start().wait_ready()

    def run(self, obs: ObserverProcess, seconds: float, tally: Tally) -> None:
        relay = _spawn([sys.executable, "-m", "obrelay", "--socket", obs.socket_path,
                        "--nats-url", self.server.url, "--depth", str(DEPTH), "--name", obs.name,
                        "--stats-s", "0", "--no-stream"], self.root / "obrelay.log")
        tally.cpu_s = lambda: proc_cpu_s(relay.pid)
        try:
            asyncio.run(self._subscribe(obs.name, seconds, tally))
            tally.stop()
        finally:
            _stop(relay)

    async def _subscribe(self, name: str, seconds: float, tally: Tally) -> None:
        import nats

        nc = await nats.connect(self.server.url)

        async def on_msg(msg):
            recv_ns = time.time_ns()
            book = wire.decode(msg.data)
            tally.arm(seconds)
            tally.add(book.name, book.book_seq, book.publish_ts_ns, recv_ns)
        await nc.subscribe(wire.books_wildcard("ob", name), cb=on_msg)
        deadline_s = time.monotonic() + START_TIMEOUT_S
        while not tally.done() and time.monotonic() < deadline_s:
            await asyncio.sleep(0.05)
        await nc.close()

    def close(self):
        if self.server is not None:
            self.server.close()


class Redis:
    name = "relay -> Redis"

    def __init__(self, root: Path):
        self.root = root
        self.proc = None
        self.port = 0

    def unavailable(self):
        if shutil.which("redis-server") is None:
            return "redis-server not installed (Debian: apt-get install redis-server)"
        try:
            import redis  # noqa: F401
        except ImportError:
            return "the redis package is not installed (pip install -e '.[bench]')"
        return None

    def start(self):
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.root)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        wait_until(lambda: _redis_ping(self.port), START_TIMEOUT_S, "redis-server")

    def run(self, obs: ObserverProcess, seconds: float, tally: Tally) -> None:
        relay = _spawn([sys.executable, __file__, "--redis-relay", obs.socket_path,
                        str(self.port), obs.name], self.root / "redis-relay.log")
        tally.cpu_s = lambda: proc_cpu_s(relay.pid)
        try:
            asyncio.run(self._subscribe(obs.name, seconds, tally))
            tally.stop()
        finally:
            _stop(relay)

    async def _subscribe(self, name: str, seconds: float, tally: Tally) -> None:
        import redis.asyncio as aioredis

        conn = aioredis.Redis(host="127.0.0.1", port=self.port)
        pubsub = conn.pubsub()
        await pubsub.psubscribe(wire.books_wildcard("ob", name))
        deadline_s = time.monotonic() + START_TIMEOUT_S
        while not tally.done() and time.monotonic() < deadline_s:
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            if msg is None:
                continue
            recv_ns = time.time_ns()
            book = wire.decode(msg["data"])
            tally.arm(seconds)
            tally.add(book.name, book.book_seq, book.publish_ts_ns, recv_ns)
        await pubsub.aclose()
        await conn.aclose()

    def close(self):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` (Linux /proc)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _redis_ping(port: int) -> bool:
    import socket

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(7) == b"+PONG\r\n"
    except OSError:
        return False


def _spawn(args, log_path: Path) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen(args, stdout=log, stderr=log, stdin=subprocess.DEVNULL)


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(20)


# -- the Redis relay: obrelay's loop with a Redis sink (a child process of this script) ----------

class RedisLink:
    """The part of obrelay.link.NatsLink that Relay uses, over Redis PUBLISH. Each publish
    waits for Redis's reply, which is the confirmation: in flight is one message at most."""

    def __init__(self, port: int):
        import redis.asyncio as aioredis

        self.conn = aioredis.Redis(host="127.0.0.1", port=port)
        self.on_ready = lambda: None
        self.on_reconnected = lambda: None
        self.connected = True
        self.inflight_bytes = self.inflight_bytes_peak = 0
        self.reconnects = self.disconnects = self.publish_errors = 0
        self.port = port

    def ready(self, reserve_bytes: int = 0) -> bool:
        return True

    def confirm(self) -> None:
        pass

    async def publish(self, subject: str, payload: bytes) -> bool:
        await self.conn.publish(subject, payload)
        return True

    def server_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"


async def redis_relay(socket_path: str, port: int, name: str) -> None:
    from obrelay.config import RelayConfig
    from obrelay.relay import Relay

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    client = obclient.Client(socket_path, client_name="redis-relay")
    link = RedisLink(port)
    config = RelayConfig(socket=socket_path, name=name, depth=DEPTH, stats_s=0)
    try:
        await Relay(config, client, link, name, time.time_ns()).run(stop)
    finally:
        await link.conn.aclose()
        client.close()


# -- phases --------------------------------------------------------------------------------------

def percentiles_us(lat_ns: list[int]) -> tuple[float, float]:
    a = np.asarray(lat_ns, dtype=np.float64) / 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def latency_phase(contenders, root: Path, seconds: float) -> dict:
    obs = observer_process(str(root / "lat"), LAT_RATE_HZ, 1)
    (root / "lat").mkdir()
    results = {}
    with obs:
        obs.wait_ready().close()
        for c in contenders:
            tally = Tally()
            c.run(obs, seconds, tally)
            results[c.name] = tally
    return results


def rate_phase(contenders, root: Path, rates, step_s: float) -> dict:
    best = {c.name: None for c in contenders}
    for rate in rates:
        workdir = root / f"rate{rate}"
        workdir.mkdir()
        obs = observer_process(str(workdir), rate, BOOKS_N)
        with obs:
            obs.wait_ready().close()
            for c in contenders:
                tally = Tally()
                c.run(obs, step_s, tally)
                observed_hz = tally.publishes() / step_s
                print(f"#   {c.name:<16} {BOOKS_N} books x {rate}/s: observer published "
                      f"{observed_hz:8.0f}/s, folded {tally.folded}, relaying CPU "
                      f"{tally.cpu_us_per_msg():6.1f} us/msg", flush=True)
                if tally.folded == 0 and tally.publishes():
                    best[c.name] = max(best[c.name] or 0.0, observed_hz)
    return best


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="shorter phases, fewer rates")
    p.add_argument("--redis-relay", nargs=3, metavar=("SOCKET", "PORT", "NAME"),
                   help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.redis_relay:
        socket_path, port, name = args.redis_relay
        asyncio.run(redis_relay(socket_path, int(port), name))
        return
    lat_s, step_s, rates = (2.0, 1.5, RATES_HZ[:3]) if args.quick else (LAT_S, RATE_STEP_S,
                                                                      RATES_HZ)
    root = Path(tempfile.mkdtemp(prefix=f"obbench-relay-{os.getpid()}-"))
    contenders, skipped = [Local()], []
    for c in (Nats(root), Redis(root)):
        reason = c.unavailable()
        if reason:
            skipped.append((c.name, reason))
        else:
            contenders.append(c)
    try:
        for c in contenders[1:]:
            c.start()
        load = os.getloadavg()
        print(f"# relay bench: load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
              f"{os.cpu_count()} cpus; latency = receipt - observer publish_ts_ns (same host)")
        lat = latency_phase(contenders, root, lat_s)
        rates_best = rate_phase(contenders, root, rates, step_s)
        report(contenders, skipped, lat, rates_best)
        print(f"# load average at end {os.getloadavg()[0]:.2f}")
    finally:
        for c in contenders[1:]:
            c.close()
        shutil.rmtree(root, ignore_errors=True)


def report(contenders, skipped, lat, rates_best) -> None:
    floor_p50, floor_p99 = percentiles_us(lat[contenders[0].name].lat_ns)
    for c in contenders:
        tally = lat[c.name]
        p50, p99 = percentiles_us(tally.lat_ns)
        best = rates_best[c.name]
        rate = f"{best:8.0f}/s" if best else "    none"
        print(f"{c.name:<16} latency p50 {p50:8.1f} us  p99 {p99:8.1f} us  (x{p50 / floor_p50:5.1f}"
              f" / x{p99 / floor_p99:5.1f} local; added p50 {p50 - floor_p50:7.1f} us)  "
              f"n {len(tally.lat_ns)}  folded {tally.folded}  CPU {tally.cpu_us_per_msg():5.1f} us/msg"
              f"  max rate unfolded {rate}")
    names = [c.name for c in contenders]
    if "obrelay -> NATS" in names and "relay -> Redis" in names:
        n50, _ = percentiles_us(lat["obrelay -> NATS"].lat_ns)
        r50, _ = percentiles_us(lat["relay -> Redis"].lat_ns)
        nb, rb = rates_best["obrelay -> NATS"], rates_best["relay -> Redis"]
        ratio = f"{nb / rb:.2f}" if nb and rb else "n/a"
        print(f"NATS / Redis: latency p50 x{n50 / r50:.2f}, max rate unfolded x{ratio}")
    for name, reason in skipped:
        print(f"{name:<16} skipped: {reason}")


if __name__ == "__main__":
    main()
