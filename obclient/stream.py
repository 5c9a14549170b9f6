"""`Client.updates()`: follow the update rings of some books across observer restarts.

Why its own module: the generator is the one place where waiting, liveness and reattaching
meet, and it reads best as one loop with three branches: detached (report stale once, try to
reattach), attached to a new generation (resolve names, make a follower, report resyncs), and
attached (take records, else wait). Waiting is check, wait, check (C6): the follower's heads are
polled before sleeping, and the wait is capped at `LIVENESS_CHECK_S` so the heartbeat and the
control socket are looked at even when no shard signals.
"""

from __future__ import annotations

import select
import time

from obclient.snapshot import Update
from proto import layout
from proto import messages as m

_EPOLL_EVENTS_MAX = 64


def follow_updates(client, names, timeout_s: float | None, spin: bool):
    from obclient.client import LIVENESS_CHECK_S, BookNotFound

    deadline_s = None if timeout_s is None else time.monotonic() + timeout_s
    follower, wanted, generation, att_seen = None, set(), 0, None
    last_top: dict[int, Update] = {}
    while True:
        if not client._ensure_attached():
            if att_seen is not None:
                yield from _stale_records(wanted, last_top)
                att_seen, follower = None, None
                deadline_s = _renew(timeout_s)
            if _expired(deadline_s):
                return
            time.sleep(min(client.reattach_period_s, _remaining(deadline_s, client.reattach_period_s)))
            continue
        att = client._att
        if att is not att_seen:
            try:
                wanted = _resolve(att.books, names)
            except m.BookNameError as exc:
                raise BookNotFound(str(exc)) from None
            shards = sorted({att.books[i].shard_index for i in wanted})
            follower = att.reader.follow(shards)
            if generation:           # a reattach inside this generator: resync every book
                yield from _resync_records(att.reader, wanted, last_top)
                deadline_s = _renew(timeout_s)
            att_seen, generation = att, att.generation
        got = False
        for update in follower.poll():
            if update.book_index in wanted:
                last_top[update.book_index] = update
                got = True
                yield update
        if got:
            deadline_s = _renew(timeout_s)
            continue
        if _expired(deadline_s):
            return
        wait_s = _remaining(deadline_s, LIVENESS_CHECK_S)
        if follower.pending():
            continue
        if spin:
            follower.spin(wait_s)
        else:
            sock_fd = att.sock.fileno()
            for fd, _ in client._epoll.poll(wait_s, _EPOLL_EVENTS_MAX):
                if fd == sock_fd:
                    client.liveness_due_s = 0.0      # hang-up or a message: check at once


def _resolve(books, names) -> set[int]:
    if names is None:
        return {b.book_index for b in books}
    if isinstance(names, str):
        names = [names]
    return {m.resolve_book(name, books).book_index for name in names}


def _stale_records(wanted, last_top):
    for book_index in sorted(wanted):
        top = last_top.get(book_index)
        fields = list(top) if top is not None else [book_index] + [0] * (len(Update._fields) - 1)
        fields[1] = layout.KIND_STALE
        fields[2] = (top.flags if top is not None else 0) | layout.FLAG_STALE
        yield Update(*fields)


def _resync_records(reader, wanted, last_top):
    for book_index in sorted(wanted):
        snap = reader.snapshot(book_index, 1)
        update = Update(
            book_index, layout.KIND_RESYNC, snap.flags, snap.price_exp, snap.size_exp, snap.seq,
            snap.update_id, snap.exch_ts_ns, snap.recv_ts_ns, snap.publish_ts_ns,
            int(snap.bid_px[0]) if snap.n_bids else 0, int(snap.bid_sz[0]) if snap.n_bids else 0,
            int(snap.ask_px[0]) if snap.n_asks else 0, int(snap.ask_sz[0]) if snap.n_asks else 0)
        last_top[book_index] = update
        yield update


def _renew(timeout_s):
    return None if timeout_s is None else time.monotonic() + timeout_s


def _expired(deadline_s) -> bool:
    return deadline_s is not None and time.monotonic() >= deadline_s


def _remaining(deadline_s, cap_s: float) -> float:
    if deadline_s is None:
        return cap_s
    return max(0.0, min(cap_s, deadline_s - time.monotonic()))
