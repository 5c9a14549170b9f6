"""What the end-to-end tests share: a ring recorder, per-venue views, waits and comparisons.

The tests run a real obsim and a real observer process (six feeds in one shard, configured with
`observer --config` on obsim's URLs and CA) and look at the observer only as a strategy would:
through obclient (shared memory for books and the update ring, the control socket for stats).
"""

from __future__ import annotations

import threading
import time
from decimal import Decimal

import obclient
from kit.procs import wait_until
from obproto import symbols as symbol_names

DEADLINE_S = 30.0
POLL_S = 0.02
COMPARE_DEPTH = 10
STATS_PERIOD_NS = 200_000_000   # the shard's stats copy period (exchangefeed.STATS_PERIOD_S)
AGE_ROUNDING_NS = 1_000_000      # obctl stats rounds heartbeat ages to the millisecond
RECORDS_PER_BOOK_MAX = 200_000  # the recorder's own limit; a run produces far fewer


def wait(predicate, what, timeout_s=DEADLINE_S):
    """A deadline for something to happen, never a timing assertion."""
    return wait_until(predicate, timeout_s, what, poll_s=POLL_S)


class RingRecorder:
    """Follows every shard's update ring in a thread (its own client) and keeps each book's
    records, so a test can check what was published live between two points of its run."""

    def __init__(self, socket_path):
        self.client = obclient.connect(socket_path, client_name="e2e-ring")
        self.names = {info.book_index: info.name for info in self.client.books()}
        self.records = {name: [] for name in self.names.values()}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, name="e2e-ring", daemon=True)
        self.error = None

    def start(self):
        self.thread.start()
        return self

    def run(self):
        try:
            stream = self.client.stream()
            while not self.stopping.is_set():
                updates = stream.poll()
                if not updates:
                    stream.wait(0.05)
                    continue
                with self.lock:
                    for update in updates:
                        kept = self.records[self.names[update.book_index]]
                        assert len(kept) < RECORDS_PER_BOOK_MAX, "ring recorder limit"
                        kept.append(update)
        except BaseException as exc:  # reported by check(), never lost in the thread
            self.error = exc

    def mark(self, name):
        with self.lock:
            return len(self.records[name])

    def since(self, name, mark):
        with self.lock:
            return list(self.records[name][mark:])

    def check(self):
        assert self.error is None, f"ring recorder failed: {self.error!r}"
        assert self.thread.is_alive()

    def stop(self):
        self.stopping.set()
        self.thread.join(5)
        self.client.close()


class Venue:
    """One exchange as the test sees it: obsim's name and symbols, the observer's book names."""

    def __init__(self, sim, client, ring, sim_exchange, book_exchange):
        self.sim = sim
        self.client = client
        self.ring = ring
        self.exchange = sim_exchange
        self.natives = list(sim.info["exchanges"][sim_exchange]["symbols"])
        self.names = [f"{book_exchange}:{symbol_names.normalise(n)}" for n in self.natives]

    def stats(self):
        """{book name: counters} from `obctl stats` (the control socket's stats request)."""
        return {row["book"]: row for row in self.client.stats().books if row["book"] in self.names}

    def total(self, field, stats=None):
        return sum(row[field] for row in (stats or self.stats()).values())

    def live(self):
        return all(not self.client.snapshot(name, 0).stale for name in self.names)

    def wait_live(self, what):
        wait(self.live, f"{self.exchange}: every book live ({what})")

    def settled_stats(self):
        """Stats once the shards' periodic counter copy has run since this call, so a baseline
        does not miss a count of the previous fault that is still on its way. Shown by the
        shards' own clocks, not ours: every shard wrote a heartbeat after a copy period had
        passed (so the copy's timer had fired by that loop turn), then another (that turn is
        over, the copy done)."""
        mark_ns = time.time_ns()
        first = wait(lambda: self._heartbeats_after(mark_ns + STATS_PERIOD_NS),
                     f"{self.exchange}: shard heartbeats a stats period on")
        wait(lambda: self._heartbeats_after(first), f"{self.exchange}: the next shard heartbeats")
        return self.stats()

    def _heartbeats_after(self, after_ns):
        """Upper bounds of each shard's heartbeat time if every one is surely later than
        `after_ns` (one time for all, or one per shard), else None. The bounds come from the heartbeat's
        age in `obctl stats`, between our clock before and after the request."""
        before_ns = time.time_ns()
        shards = self.client.stats().observer["shard_list"]
        after_request_ns = time.time_ns()
        if any(row["heartbeat_age_s"] is None for row in shards):
            return None                            # a shard that has not beaten yet
        ages_ns = [int(row["heartbeat_age_s"] * 1e9) for row in shards]
        lower = [before_ns - age - AGE_ROUNDING_NS for age in ages_ns]
        if isinstance(after_ns, int):
            after_ns = [after_ns] * len(lower)
        if any(lo <= t for lo, t in zip(lower, after_ns, strict=True)):
            return None
        return [after_request_ns - age + AGE_ROUNDING_NS for age in ages_ns]

    def wait_grew(self, field, before, what):
        """A per-book counter in `obctl stats` grew past its value before the fault."""
        wait(lambda: self.total(field) > self.total(field, before),
             f"{self.exchange}: {field} grew ({what})")

    def wait_publishing(self, count, what):
        marks = {name: self.ring.mark(name) for name in self.names}
        wait(lambda: all(sum(1 for u in self.ring.since(n, marks[n]) if not u.stale) >= count
                         for n in self.names),
             f"{self.exchange}: {count} live publishes per book ({what})")

    def equal_to_true(self, name, native, depth=COMPARE_DEPTH):
        snap = self.client.snapshot(name, depth)
        if snap.stale:
            return False
        return book_levels(snap) == true_levels(self.sim.book(self.exchange, native, depth=depth))

    def wait_equal(self, what, timeout_s=DEADLINE_S):
        """With the stream paused: every book becomes live and equal to obsim's true book."""
        for name, native in zip(self.names, self.natives):
            wait(lambda: self.equal_to_true(name, native),
                 f"{self.exchange}: {name} equal to obsim's true book ({what})", timeout_s)


def book_levels(snap):
    def side(px, sz):
        return [(Decimal(int(p)).scaleb(snap.price_exp), Decimal(int(s)).scaleb(snap.size_exp))
                for p, s in zip(px, sz)]
    return side(snap.bid_px, snap.bid_sz), side(snap.ask_px, snap.ask_sz)


def true_levels(true):
    def side(levels):
        return [(Decimal(p), Decimal(s)) for p, s in levels]
    return side(true["bids"]), side(true["asks"])


def true_top(true):
    bids, asks = true_levels(true)
    return (bids[0][0] if bids else None), (asks[0][0] if asks else None)


def record_top(update):
    scale = update.price_exp
    bid = Decimal(update.bid_px).scaleb(scale) if update.bid_sz else None
    ask = Decimal(update.ask_px).scaleb(scale) if update.ask_sz else None
    return bid, ask
