"""The relay loop: observer updates in, one NATS message per changed book out, coalesced.

One asyncio loop, one thread. obclient's epoll fd (`client.fileno()`: the shard eventfds and
the control socket) sits in asyncio's selector; when it fires, or on a short tick that keeps
obclient's liveness check and reattach going while nothing fires, `pump` runs three phases:

    stream.wait(0); stream.poll()    # edges taken, then ring records (obclient follows restarts)
    table.note(record) ...           # each changed followed book is marked dirty, once
    publish dirty books while the link is ready, reading each book's slot *now*

A book's message is read from the slot when it is sent, not when it changed, so a relay behind
its feed (NATS slow or stopped) sends each book's latest state once it can, and counts the
publishes it folded in (client/obrelay/books.py). Nothing is queued per update.

The loop never waits on NATS: publishing hands bytes to nats-py, whose flusher writes them; the
link's window (client/obrelay/link.py) is what says "not now". The heartbeat runs on its own timer and
carries the counters; `shutdown` marks every published book stale, then says `stopping`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import msgpack

from obclient.client import BookNotFound, ObserverUnavailable
from obrelay.books import BookTable, FollowedBook
from obrelay.config import RelayConfig
from obrelay.link import NatsLink
from obproto import relay as wire

log = logging.getLogger("obrelay")

TICK_S = 0.1                 # the pump runs at least this often (liveness, reattach)
PUBLISH_BATCH_MAX = 256      # messages handed to nats-py before its flusher gets a turn


class Relay:
    def __init__(self, config: RelayConfig, client, link: NatsLink, observer: str,
                 incarnation: int):
        self.config = config
        self.client = client
        self.link = link
        self.observer = observer
        self.incarnation = incarnation
        prefix = config.subject_prefix
        self.table = BookTable(lambda name: wire.book_subject(prefix, observer, name),
                               config.follows)
        self.hb_subject = wire.heartbeat_subject(prefix, observer)
        self.stream = client.stream(None)        # every book; the table keeps the followed
        self._packer = msgpack.Packer(autoreset=True)
        self._wake = asyncio.Event()
        self.published = 0
        self.hb_seq = 0
        self.hb_skipped = 0
        self.started_s = time.monotonic()
        link.on_ready = self._wake.set
        link.on_reconnected = self.table.mark_all

    # -- running -----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        loop.add_reader(self.client.fileno(), self._wake.set)
        tasks = [loop.create_task(coro) for coro in (
            self._pump_loop(), self._tick_loop(), self._heartbeat_loop(), self._stats_loop())]
        try:
            await stop.wait()
        finally:
            loop.remove_reader(self.client.fileno())
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.shutdown()

    async def _pump_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.pump()

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            self._wake.set()

    async def _heartbeat_loop(self) -> None:
        period_s = self.config.heartbeat_ms / 1000
        due_s = time.monotonic()
        while True:
            await self.publish_heartbeat(stopping=False)
            due_s = max(due_s + period_s, time.monotonic())   # no burst after a stall
            await asyncio.sleep(due_s - time.monotonic())

    async def _stats_loop(self) -> None:
        if not self.config.stats_s:
            return
        while True:
            await asyncio.sleep(self.config.stats_s)
            log.info("stats %s", " ".join(f"{k}={v}" for k, v in self.stats().items()))

    # -- the pump ----------------------------------------------------------------------------

    async def pump(self) -> None:
        """Take the new records, mark their books, publish what the link takes."""
        # Consume the epoll's edges first (or asyncio would call us again), then read the
        # rings: a record published before the edges were taken is in the ring by now, one
        # published after makes a new edge. The other order loses that record's wake-up.
        self.stream.wait(0)
        records = self.stream.poll()
        self._follow_generation()
        table = self.table
        for update in records:
            table.note(update)
        await self._publish_dirty()

    def _follow_generation(self) -> None:
        """A newly attached observer generation: map its books, mark every followed one."""
        generation = self.client.generation
        if not generation or generation == self.table.generation:
            return
        try:
            infos = self.client.books()
        except ObserverUnavailable:
            return                 # gone again already; the next pump sees it
        followed = self.table.attach(generation, infos)
        log.info("observer generation %d: relaying %d of its %d books", generation,
                 len(followed), len(infos))
        if not followed:
            log.warning("no book of the observer matches --books %s",
                        ",".join(self.config.books))

    async def _publish_dirty(self) -> None:
        table, link = self.table, self.link
        sent = 0
        while link.ready():
            book = table.pop()
            if book is None:
                return
            if not await self.publish_book(book):
                table.mark(book)   # the link refused it: the book stays dirty for later
                return
            sent += 1
            if sent % PUBLISH_BATCH_MAX == 0:
                await asyncio.sleep(0)

    async def publish_book(self, book: FollowedBook, *, stale: bool = False) -> bool:
        """Publish `book`'s current state (its last one, stale, if the observer is gone)."""
        client = self.client
        snap = None
        generation = book.generation
        if client.attached and book.index >= 0 and not stale:
            try:
                snap = client.snapshot(book.name, self.config.depth)
            except (ObserverUnavailable, BookNotFound):
                snap = None
            generation = client.generation or book.generation
            stale = not client.attached
        if snap is None:
            snap, stale = book.last, True
            if snap is None:
                return True        # never published and nothing to say: done with it
        flags = ((wire.FLAG_STALE if stale or snap.stale else 0)
                 | (wire.FLAG_LAGGING if snap.lagging else 0))
        payload = wire.encode_book(self._packer, self.incarnation, book.relay_seq + 1,
                                   book.name, generation, snap, time.time_ns(), flags)
        if not await self.link.publish(book.subject, payload):
            return False
        self.table.published(book, generation, snap)
        self.published += 1
        return True

    # -- heartbeat, stats, shutdown ----------------------------------------------------------

    async def publish_heartbeat(self, *, stopping: bool) -> None:
        if not self.link.connected:
            return                 # a late heartbeat would lie about when it was true
        client = self.client
        hb = wire.Heartbeat(
            wire.TYPE_HEARTBEAT, wire.SCHEMA_VERSION, self.incarnation, self.hb_seq + 1,
            time.time_ns(), self.config.heartbeat_ms, client.attached, client.generation,
            _observer_heartbeat_ns(client), stopping, self.table.relay_seqs(), self.stats())
        payload = wire.encode_heartbeat(self._packer, hb)
        if not stopping and not self.link.ready(reserve_bytes=len(payload)):
            self.hb_skipped += 1   # NATS is not taking even this: receivers see silence
            return
        if await self.link.publish(self.hb_subject, payload):
            self.hb_seq += 1
        self.link.confirm()

    def stats(self) -> dict:
        link, table = self.link, self.table
        return {
            "books": len(table), "published": self.published, "coalesced": table.coalesced,
            "dirty": table.dirty_count, "inflight_bytes": link.inflight_bytes,
            "inflight_bytes_peak": link.inflight_bytes_peak,
            "inflight_bytes_max": self.config.inflight_bytes_max,
            "nats_reconnects": link.reconnects, "nats_disconnects": link.disconnects,
            "publish_errors": link.publish_errors, "heartbeats_skipped": self.hb_skipped,
            "observer_attaches": self.client.attaches,
            "observer_detaches": self.client.detaches, "nats_server": link.server_url(),
            "uptime_s": int(time.monotonic() - self.started_s),
        }

    async def shutdown(self) -> None:
        """Say every published book is stale (no one relays it now), then `stopping`.
        Bounded: one message per book, whatever the window says."""
        if self.link.connected:
            for book in list(self.table.by_name.values()):
                if book.last is not None:
                    await self.publish_book(book, stale=True)
            await self.publish_heartbeat(stopping=True)
        log.info("stopping: %s", " ".join(f"{k}={v}" for k, v in self.stats().items()))


def _observer_heartbeat_ns(client) -> int:
    """The attached observer's header heartbeat (C9), 0 when none is attached.

    obclient applies the heartbeat itself (a stale one detaches the client) but has no public
    accessor for its value yet; this is the one place that reads it through the attachment.
    """
    att = getattr(client, "_att", None)
    return att.reader.heartbeat_ns() if att is not None else 0
