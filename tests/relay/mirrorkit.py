"""What the mirror tests share: a remote observer whose `nats` feed mirrors a relay's books,
and the checks of its books against the synthetic reference (relaykit.SyntheticReplay).

A mirror is a real observer process with a config file naming its NATS servers, the relay's
observer name and the books; obclient reads it as it reads any observer.
"""

from __future__ import annotations

import json
import os
import time

import obclient
from kit.procs import ObserverProcess
from relaykit import RELAY_DEPTH, SyntheticReplay

MIRROR_DEPTH = RELAY_DEPTH
WAIT_S = 60.0
POLL_S = 0.02


def mirror_observer(urls, relay: str, books, *, workdir: str, name: str,
                    extra_feed: str = "", extra_args=()) -> ObserverProcess:
    """A mirror observer of `relay`'s `books` (None: every book of the relay)."""
    os.makedirs(workdir, exist_ok=True)
    urls = [urls] if isinstance(urls, str) else list(urls)
    path = os.path.join(workdir, f"{name}.toml")
    with open(path, "w") as f:
        symbols = f'symbols = {json.dumps(list(books))}\n' if books is not None else ""
        f.write(f'[observer]\ndepth = {MIRROR_DEPTH}\n\n[[feed]]\nexchange = "nats"\n'
                f'url = {json.dumps(urls)}\nrelay = "{relay}"\n{symbols}{extra_feed}')
    return ObserverProcess(None, workdir=workdir, name=name,
                           extra_args=["--config", path, *extra_args])


class MirrorReader:
    """An obclient on a mirror: snapshots of its books, waits on conditions over them."""

    def __init__(self, observer: ObserverProcess, books):
        self.observer = observer
        self.books = list(books)
        self.client = obclient.connect(observer.socket_path, client_name="mirror-test")
        self.replays: dict[str, SyntheticReplay] = {}
        self.checked = 0

    def snapshots(self) -> dict:
        return {b: self.client.snapshot(b, MIRROR_DEPTH) for b in self.books}

    def wait(self, predicate, what: str, timeout_s: float = WAIT_S) -> dict:
        """Snapshots of every book once `predicate(snapshots)` holds; TimeoutError naming what."""
        deadline_s = time.monotonic() + timeout_s
        while True:
            try:
                snaps = self.snapshots()
            except obclient.ObserverUnavailable:
                snaps = None
            if snaps is not None and predicate(snaps):
                return snaps
            if time.monotonic() > deadline_s:
                raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}:\n"
                                   f"{self.observer.log_text()[-4000:]}")
            time.sleep(POLL_S)

    def wait_all_live(self, what: str, *, after: dict | None = None, timeout_s=WAIT_S) -> dict:
        """Every book live (and past `after[book]`'s update id when given)."""
        def ok(snaps):
            return all(not s.stale and (after is None or s.update_id > after[b])
                       for b, s in snaps.items())
        return self.wait(ok, what, timeout_s)

    def wait_all_stale(self, what: str, timeout_s=WAIT_S) -> dict:
        return self.wait(lambda snaps: all(s.stale for s in snaps.values()), what, timeout_s)

    def check_exact(self, snaps: dict) -> None:
        """Each book equals the source's book at the same update id, level by level."""
        for book, snap in snaps.items():
            replay = self.replays.get(book)
            if replay is None or replay.feed.update_id > snap.update_id:
                replay = self.replays[book] = SyntheticReplay(book.split(":", 1)[1])
            bids, asks = replay.levels_at(snap.update_id, MIRROR_DEPTH)
            assert list(zip(snap.bid_px.tolist(), snap.bid_sz.tolist())) == bids, \
                f"{book} update {snap.update_id}: bids differ"
            assert list(zip(snap.ask_px.tolist(), snap.ask_sz.tolist())) == asks, \
                f"{book} update {snap.update_id}: asks differ"
            assert (snap.price_exp, snap.size_exp) == (replay.book.price_exp,
                                                       replay.book.size_exp)
            self.checked += 1

    def close(self) -> None:
        self.client.close()
