"""What the relay tests share: an obrelay process, a NATS subscriber, and the reference books.

The reference. A synthetic feed of one symbol is a pure function of its seed and its update
count (proto: the update id), so `SyntheticReplay` rebuilds, in the test process, the exact book
the observer held when it published any update id; every relayed message is checked against it,
level by level. The observer runs one synthetic feed per symbol (`--feed synthetic:BTCUSD
--feed synthetic:ETHUSD`) so that each book's walk is its own.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import nats

from obrelay.link import pub_bytes
from observer.book import ASK, BID
from observer.feeds.synthetic import SyntheticFeed
from kit.procs import ObserverProcess, log_text, wait_until
from obproto import relay as wire

SEED = 7
OBSERVER_DEPTH = 50
RELAY_DEPTH = 10
STOP_TIMEOUT_S = 20.0
WAIT_S = 60.0


def synthetic_observer(symbols=("BTCUSD", "ETHUSD"), *, rate: float = 100.0, workdir=None,
                       name=None) -> ObserverProcess:
    feeds = [arg for s in symbols for arg in ("--feed", f"synthetic:{s}")]
    return ObserverProcess(None, workdir=workdir, name=name, extra_args=[
        *feeds, "--rate", str(rate), "--seed", str(SEED), "--depth", str(OBSERVER_DEPTH)])


class SyntheticReplay:
    """The book of one single-symbol synthetic feed at any update id, going forward."""

    def __init__(self, symbol: str):
        self.feed = SyntheticFeed([symbol], rate_hz=1.0, seed=SEED, depth=OBSERVER_DEPTH,
                                  updates_per_tick_max=1)
        self.feed.start(0)
        self.book = self.feed.books[symbol]

    def levels_at(self, update_id: int, depth: int) -> tuple[list, list]:
        assert update_id >= self.feed.update_id, "the replay only goes forward"
        while self.feed.update_id < update_id:
            self.feed.on_tick(self.feed.next_deadline_ns())
        return self.book.levels(BID, depth), self.book.levels(ASK, depth)


def levels_of(msg: wire.BookMessage) -> tuple[list, list]:
    return list(zip(msg.bid_px, msg.bid_sz)), list(zip(msg.ask_px, msg.ask_sz))


class ExactnessCheck:
    """Checks each book message against the replayed book at its update id."""

    def __init__(self, depth: int = RELAY_DEPTH):
        self.depth = depth
        self._replays: dict[str, SyntheticReplay] = {}
        self.checked = 0

    def check(self, msg: wire.BookMessage) -> None:
        replay = self._replays.get(msg.name)
        if replay is None:
            replay = self._replays[msg.name] = SyntheticReplay(msg.name.split(":", 1)[1])
        bids, asks = replay.levels_at(msg.update_id, self.depth)
        got_bids, got_asks = levels_of(msg)
        assert got_bids == bids, f"{msg.name} update {msg.update_id}: bids differ"
        assert got_asks == asks, f"{msg.name} update {msg.update_id}: asks differ"
        assert msg.price_exp == replay.book.price_exp
        assert msg.size_exp == replay.book.size_exp
        self.checked += 1


class RelayProcess:
    """`python -m obrelay` on an observer's socket, its log in the caller's directory."""

    def __init__(self, observer: ObserverProcess, nats_urls, *args, workdir, tag="relay"):
        self.log_path = os.path.join(workdir, f"{tag}-{time.monotonic_ns()}.log")
        urls = nats_urls if isinstance(nats_urls, str) else ",".join(nats_urls)
        self.args = [sys.executable, "-m", "obrelay", "--socket", observer.socket_path,
                     "--nats-url", urls, "--depth", str(RELAY_DEPTH), "--stats-s", "0", *args]
        self.proc: subprocess.Popen | None = None

    def start(self) -> "RelayProcess":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL)
        return self

    def log_text(self) -> str:
        return log_text(self.log_path)

    def wait_exit(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        return self.proc.wait(timeout_s)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(STOP_TIMEOUT_S)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT_S)

    def __enter__(self) -> "RelayProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()


@dataclass
class Received:
    books: list = field(default_factory=list)        # (subject, BookMessage), arrival order
    heartbeats: list = field(default_factory=list)   # Heartbeat, arrival order
    largest_bytes: dict = field(default_factory=dict)  # type -> largest publish (link.pub_bytes)

    def of(self, name: str) -> list:
        return [m for _, m in self.books if m.name == name]


class Subscriber:
    """A nats-py subscriber on its own asyncio loop in the test's thread, driven by `run_until`.

    Collects every message on `subject`, decoded; the test says when it has seen enough."""

    def __init__(self, urls, subject: str, **connect):
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        self.subject = subject
        self.connect_options = connect
        self.got = Received()
        self.loop = asyncio.new_event_loop()
        self.nc = None

    def start(self) -> "Subscriber":
        self.loop.run_until_complete(self._start())
        return self

    async def _start(self):
        self.nc = await nats.connect(self.urls, max_reconnect_attempts=-1,
                                     reconnect_time_wait=0.2, **self.connect_options)
        await self.nc.subscribe(self.subject, cb=self._on_msg,
                                pending_msgs_limit=1_000_000, pending_bytes_limit=1 << 30)
        await self.nc.flush()

    async def _on_msg(self, msg) -> None:
        decoded = wire.decode(msg.data)
        size = pub_bytes(msg.subject, len(msg.data))
        if size > self.got.largest_bytes.get(decoded.type, 0):
            self.got.largest_bytes[decoded.type] = size
        if type(decoded) is wire.Heartbeat:
            self.got.heartbeats.append(decoded)
        else:
            self.got.books.append((msg.subject, decoded))

    def run_until(self, predicate, what: str, timeout_s: float = WAIT_S):
        """Run the loop until `predicate(got)` is true; TimeoutError naming `what`."""
        async def wait():
            deadline_s = time.monotonic() + timeout_s
            while not (value := predicate(self.got)):
                if time.monotonic() > deadline_s:
                    raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
                await asyncio.sleep(0.02)
            return value
        return self.loop.run_until_complete(wait())

    def run_for(self, seconds: float) -> None:
        self.loop.run_until_complete(asyncio.sleep(seconds))

    def call(self, coro):
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        if self.nc is not None:
            self.loop.run_until_complete(self.nc.close())
        self.loop.close()

    def __enter__(self) -> "Subscriber":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


def last_heartbeat(got: Received):
    return got.heartbeats[-1] if got.heartbeats else None


def wait_observer(observer: ObserverProcess) -> None:
    observer.wait_ready().close()


__all__ = ["ExactnessCheck", "RelayProcess", "Subscriber", "SyntheticReplay", "synthetic_observer",
           "wait_observer", "wait_until", "last_heartbeat", "levels_of"]


async def fetch_last_values(nc, observer_name: str, *, books_only: bool = True,
                            timeout_s: float = WAIT_S) -> dict:
    """The stream's last message of each of an observer's subjects (one direct get each),
    keyed by book name (and "_hb"). Retries while JetStream is electing (after a node died),
    as a receiver must."""
    import nats.errors
    import nats.js.errors

    jsm = nc.jsm()
    stream = wire.stream_name(observer_name)
    subjects = (wire.books_wildcard if books_only else wire.observer_wildcard)("ob", observer_name)
    deadline_s = time.monotonic() + timeout_s
    while True:
        try:
            info = await jsm.stream_info(stream, subjects_filter=subjects)
            out = {}
            for subject in info.state.subjects or {}:
                msg = wire.decode((await jsm.get_last_msg(stream, subject, direct=True)).data)
                out["_hb" if type(msg) is wire.Heartbeat else msg.name] = msg
            return out
        except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError):
            if time.monotonic() > deadline_s:
                raise
            await asyncio.sleep(0.2)
