"""Update streams: follow the update rings of some books across observer restarts.

Why a class: the same cursor must serve a blocking loop (`Client.updates()`, a generator) and an
event loop that only wants "what is new, without blocking" when `client.fileno()` turns readable
(`Client.stream(names).poll()`). Both keep one `UpdateStream`, so no record is skipped between
calls: a fresh follower would start at the ring heads and miss what woke the caller.

`poll()` has three branches: detached (report every followed book stale once, try to reattach),
attached to a new generation (resolve names, make a follower, report a resync per book), and
attached (take the records of the followed books). `wait()` is the blocking half: epoll on the
wake fds and the control socket, or busy-polling the ring heads; it never waits longer than
`LIVENESS_CHECK_S`, so the heartbeat and the socket are looked at even when no shard signals.
A wake-up is a hint (C6): the caller always polls again after waiting.
"""

from __future__ import annotations

import time

from obclient.errors import book_error
from obproto.snapshot import Update
from obproto import layout
from obproto import messages as m

_EPOLL_EVENTS_MAX = 64
LIVENESS_CHECK_S = 0.25        # the longest a wait goes without looking at the observer's heartbeat


class UpdateStream:
    def __init__(self, client, names=None, *, busy_poll: bool = False):
        self.client = client
        self.names = [names] if isinstance(names, str) else names
        self.busy_poll = busy_poll
        self._follower = None
        self._wanted: set[int] = set()
        self._att_seen = None
        self._generation = 0
        self._last_top: dict[int, Update] = {}
        self._record_type = Update
        self.stale_reports = 0
        self.resyncs = 0
        if client._att is not None:        # a misspelt name fails here, not at the first record
            self._resolve(client._att.books)

    @property
    def following(self) -> bool:
        """True while attached to an observer and following its rings."""
        return self._att_seen is not None and self._att_seen is self.client._att

    def poll(self) -> list[Update]:
        """The records that are new for the followed books; never blocks (a reattach attempt
        is bounded by the client's reattach timeout)."""
        client = self.client
        if not client._ensure_attached():
            return self._on_detached()
        att = client._att
        out: list[Update] = []
        if att is not self._att_seen:
            self._on_attached(att, out)
        wanted, last_top = self._wanted, self._last_top
        for update in self._follower.poll():
            if update.book_index in wanted:
                last_top[update.book_index] = update
                out.append(update)
        return out

    def wait(self, timeout_s: float) -> None:
        """Block until something may be new, for at most `timeout_s` seconds."""
        client = self.client
        att = client._att
        if att is None or att is not self._att_seen:
            time.sleep(min(timeout_s, client.reattach_period_s))
            return
        if self._follower.pending():
            return
        if self.busy_poll:
            self._follower.spin(timeout_s)
            return
        sock_fd = att.sock.fileno()
        events = client._epoll.poll(timeout_s, _EPOLL_EVENTS_MAX)
        for fd, _ in events:
            if fd == sock_fd:
                client.liveness_due_s = 0.0          # hang-up or a message: check at once
        if events and not self._follower.pending():
            self._follower.spin_while_ahead()  # woken ahead of a publish: wait for it here

    def iterate(self, timeout_s: float | None = None):
        """Yield records as they arrive; return after `timeout_s` seconds without one."""
        deadline_s = _renew(timeout_s)
        while True:
            batch = self.poll()
            if batch:
                yield from batch
                deadline_s = _renew(timeout_s)
                continue
            if deadline_s is None:
                self.wait(LIVENESS_CHECK_S)
                continue
            remaining_s = deadline_s - time.monotonic()
            if remaining_s <= 0:
                return
            self.wait(min(remaining_s, LIVENESS_CHECK_S))

    def _on_detached(self) -> list[Update]:
        if self._att_seen is None:
            return []
        self._att_seen, self._follower = None, None
        self.stale_reports += 1
        make = self._record_type
        return [_marked_stale(make, i, self._last_top.get(i)) for i in sorted(self._wanted)]

    def _resolve(self, books) -> set[int]:
        try:
            return _resolve(books, self.names)
        except m.BookNameError as exc:
            raise book_error(exc) from None

    def _on_attached(self, att, out: list) -> None:
        self._wanted = self._resolve(att.books)
        self._record_type = att.reader.record_type
        shards = sorted({att.books[i].shard_index for i in self._wanted})
        self._follower = att.reader.follow(shards)
        if self._generation:                  # a reattach: every book may have moved on
            self.resyncs += 1
            for book_index in sorted(self._wanted):
                update = _from_slot(att.reader, book_index)
                self._last_top[book_index] = update
                out.append(update)
        self._att_seen, self._generation = att, att.generation


def _resolve(books, names) -> set[int]:
    if names is None:
        return {b.book_index for b in books}
    return {m.resolve_book(name, books).book_index for name in names}


def _marked_stale(make, book_index: int, top: Update | None) -> Update:
    fields = list(top) if top is not None else [book_index] + [0] * (len(Update._fields) - 1)
    fields[1] = layout.KIND_STALE
    fields[2] = (top.flags if top is not None else 0) | layout.FLAG_STALE
    return make(*fields)


def _from_slot(reader, book_index: int) -> Update:
    snap = reader.snapshot(book_index, 1)
    return reader.record_type(
        book_index, layout.KIND_RESYNC, snap.flags, snap.price_exp, snap.size_exp, snap.seq,
        snap.update_id, snap.exch_ts_ns, snap.recv_ts_ns, snap.publish_ts_ns,
        int(snap.bid_px[0]) if snap.n_bids else 0, int(snap.bid_sz[0]) if snap.n_bids else 0,
        int(snap.ask_px[0]) if snap.n_asks else 0, int(snap.ask_sz[0]) if snap.n_asks else 0)


def _renew(timeout_s):
    return None if timeout_s is None else time.monotonic() + timeout_s
