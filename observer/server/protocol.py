"""The control server's protocol machine for one connection: bytes in, replies and pushes out.

Why sans-IO: everything that decides what a client gets (framing, decoding, the hello gate,
error replies, the bad-message budget, subscriptions, the bounded update queue and its drop count)
lives here with no socket and no loom, so tests drive it byte by byte through an in-memory pair and
the transport (`control.py`) stays a thin loop of recv, dispatch, send.

What one connection may cost is fixed when it is created: one frame of input
(`REQUEST_BYTES_MAX`), `outbound_frames_max` replies (at most `OUTBOUND_BYTES_MAX` bytes)
waiting to be sent, `queue_records_max` pushed update records. A client that sends requests but
never reads its replies hits the outbound limit and is closed; a subscriber that reads too slowly
loses update records (counted, reported in every `updates` message and in stats) and the shard
that produced them never waits.

The machine never raises on bad input. Each malformed, oversized or unknown message gets an
`error` reply and costs one unit of `bad_messages_max`; a stream that cannot be framed at all, or
a client out of budget, gets a last error and `closing` is set. Replies are produced by a
`Catalog` (the supervisor's view of the books, see control.py), called only for valid requests.
"""

from __future__ import annotations

import collections
import logging
import os
from dataclasses import dataclass

from proto import framing
from proto import messages as m

log = logging.getLogger("observer.server")

BAD_MESSAGES_MAX = 3
OUTBOUND_FRAMES_MAX = 64
OUTBOUND_BYTES_MAX = 2 * 1024 * 1024
QUEUE_RECORDS_MAX = 4096
SUBSCRIPTIONS_MAX = m.NAMES_MAX


@dataclass(slots=True)
class Outbound:
    """One frame to send, with the fds that ride on its first byte (SCM_RIGHTS).

    The fds belong to the frame (the catalog made them for this client): whoever takes the
    frame calls `release()` once it is sent or dropped, so none outlives its frame.
    """

    data: bytes
    fds: tuple = ()

    def release(self) -> None:
        fds, self.fds = self.fds, ()
        for fd in fds:
            os.close(fd)


class ServerConnection:
    """One client's protocol state. `closing` set means: flush outbound, then close."""

    def __init__(self, catalog, *, conn_id: int, peer: tuple = (0, 0, 0),
                 queue_records_max: int = QUEUE_RECORDS_MAX,
                 outbound_frames_max: int = OUTBOUND_FRAMES_MAX,
                 bad_messages_max: int = BAD_MESSAGES_MAX):
        self.catalog = catalog
        self.conn_id = conn_id
        self.peer = peer                      # (pid, uid, gid) from SO_PEERCRED
        self.client_name = ""
        self.version = 0                      # 0 until hello
        self.subscribed: set[int] = set()
        self.updates = collections.deque(maxlen=queue_records_max)
        self.queue_records_max = queue_records_max
        self.updates_dropped = 0
        self.updates_sent = 0
        self.requests = 0
        self.bad_messages = 0
        self.bad_messages_max = bad_messages_max
        self.outbound: collections.deque[Outbound] = collections.deque()
        self.outbound_frames_max = outbound_frames_max
        self.outbound_bytes = 0              # bytes in `outbound`; the transport subtracts
        self.closing = False
        self.close_reason = ""
        self._decoder = framing.FrameDecoder(m.REQUEST_BYTES_MAX)
        self._codec = m.server_codec()

    # --- input --------------------------------------------------------------------------------

    def receive_data(self, data) -> None:
        """Feed received bytes; replies are queued in `outbound`. b"" means the peer closed."""
        if self.closing:
            return
        if not data:
            self.close("peer closed")
            return
        self._decoder.receive_data(data)
        while not self.closing:
            try:
                payload = self._decoder.next_frame()
            except framing.FrameError as exc:
                self._bad(m.ErrorCode.BAD_FRAME, str(exc), 0, fatal=exc.fatal)
                continue
            if payload is None:
                return
            self._receive_payload(payload)

    def _receive_payload(self, payload: bytes) -> None:
        try:
            request = self._codec.decode(payload)
        except m.MessageError as exc:
            self._bad(exc.code, str(exc), exc.req_id, fatal=False)
            return
        self.requests += 1
        if self.version == 0 and type(request) is not m.Hello:
            self._bad(m.ErrorCode.NOT_READY, "send hello first", request.req_id, fatal=False)
            return
        try:
            self._dispatch(request)
        except m.MessageError as exc:
            self._bad(exc.code, str(exc), exc.req_id, fatal=False)
        except m.BookNameError as exc:
            self.reply(m.Error(request.req_id, exc.code, str(exc)))
        except Exception as exc:            # a server bug: this request fails, nothing else
            log.exception("control request %s failed", type(request).__name__)
            self.reply(m.Error(request.req_id, m.ErrorCode.INTERNAL,
                               _clip(f"{type(exc).__name__}: {exc}")))

    def _dispatch(self, request) -> None:
        handler = _HANDLERS[type(request)]
        handler(self, request)

    # --- handlers (one per request type) --------------------------------------------------------

    def _on_hello(self, req: m.Hello) -> None:
        if self.version:
            raise m.MessageError(m.ErrorCode.BAD_MESSAGE, "hello sent twice", req.req_id)
        version = min(req.version_max, m.PROTOCOL_VERSION)
        if version < max(req.version_min, m.PROTOCOL_VERSION_MIN):
            self.reply(m.Error(req.req_id, m.ErrorCode.VERSION_MISMATCH,
                               f"server speaks versions {m.PROTOCOL_VERSION_MIN}.."
                               f"{m.PROTOCOL_VERSION}, client {req.version_min}..{req.version_max}"))
            self.close("version mismatch")
            return
        self.version = version
        self.client_name = req.client_name
        info = self.catalog.hello_info()
        welcome = m.Welcome(req.req_id, version, info["server_name"], info["pid"],
                            info["generation"], info["segment_bytes"], info["layout_version"],
                            info["layout_hash"], info["n_eventfds"], bool(req.want_fds),
                            float(info["heartbeat_period_s"]))
        # New fds for this client alone (the catalog makes them); the frame owns them from here
        self.reply(welcome, tuple(self.catalog.handout_fds()) if req.want_fds else ())

    def _on_list(self, req: m.ListBooks) -> None:
        self.reply(m.BookList(req.req_id, self.catalog.book_infos()))

    def _on_describe(self, req: m.Describe) -> None:
        index = m.resolve_book(req.name, self.catalog.book_keys())[0]
        self.reply(m.BookDesc(req.req_id, self.catalog.book_info(index)))

    def _on_subscribe(self, req: m.Subscribe) -> None:
        wanted = self._resolve_names(req.names)
        if len(self.subscribed | wanted) > SUBSCRIPTIONS_MAX:
            raise m.MessageError(m.ErrorCode.LIMIT, f"subscriptions_max={SUBSCRIPTIONS_MAX}",
                                 req.req_id)
        self.subscribed |= wanted
        self.reply(m.Subscribed(req.req_id, sorted(self.subscribed), self.queue_records_max))

    def _on_unsubscribe(self, req: m.Unsubscribe) -> None:
        self.subscribed -= self._resolve_names(req.names)
        self.reply(m.Subscribed(req.req_id, sorted(self.subscribed), self.queue_records_max))

    def _on_snapshot(self, req: m.SnapshotRequest) -> None:
        if not 0 <= req.depth <= m.SNAPSHOT_DEPTH_MAX:
            raise m.MessageError(m.ErrorCode.BAD_MESSAGE,
                                 f"depth must be 0..{m.SNAPSHOT_DEPTH_MAX}", req.req_id)
        index, exchange, symbol = m.resolve_book(req.name, self.catalog.book_keys())[:3]
        snap = self.catalog.snapshot(index, req.depth)
        self.reply(m.Snapshot(req.req_id, index, m.book_name(exchange, symbol), **snap))

    def _on_stats(self, req: m.StatsRequest) -> None:
        observer, books, clients = self.catalog.stats()
        self.reply(m.Stats(req.req_id, observer, books, clients))

    def _resolve_names(self, names: list) -> set[int]:
        books = self.catalog.book_keys()
        if not names:
            return {b[0] for b in books}
        return {m.resolve_book(name, books)[0] for name in names}

    # --- output -------------------------------------------------------------------------------

    def reply(self, msg, fds: tuple = ()) -> None:
        """Queue one reply (owning `fds`); a client that lets replies pile up past the limit is
        closed."""
        out = Outbound(b"", fds)
        try:
            if len(self.outbound) >= self.outbound_frames_max:
                self.close(f"outbound_frames_max={self.outbound_frames_max}: client does not read")
                return
            if self.outbound_bytes >= OUTBOUND_BYTES_MAX:
                self.close(f"outbound_bytes_max={OUTBOUND_BYTES_MAX}: client does not read")
                return
            out.data = framing.encode_frame(self._codec.encode(msg), m.REPLY_BYTES_MAX)
        finally:
            if not out.data:               # refused, or encoding raised: no frame owns the fds
                out.release()
        self.outbound_bytes += len(out.data)
        self.outbound.append(out)

    def pop_outbound(self) -> Outbound:
        """The next frame to send (the transport calls this, never outbound.popleft)."""
        out = self.outbound.popleft()
        self.outbound_bytes -= len(out.data)
        assert self.outbound_bytes >= 0
        return out

    def release_outbound(self) -> None:
        """Drop every unsent frame and close the fds they carried (the transport, on abort)."""
        while self.outbound:
            self.pop_outbound().release()

    def push_update(self, record: tuple) -> None:
        """Called by the fan-out for a subscribed book: never blocks, drops (counted) when full."""
        if len(self.updates) == self.queue_records_max:
            self.updates_dropped += 1          # the deque's maxlen drops the oldest record
        self.updates.append(record)

    def take_updates(self, batch_max: int = m.UPDATES_BATCH_MAX) -> bytes | None:
        """One framed `updates` message with up to `batch_max` queued records, or None."""
        if not self.updates:
            return None
        n = min(batch_max, len(self.updates))
        records = [list(self.updates.popleft()) for _ in range(n)]
        self.updates_sent += n
        payload = self._codec.encode(m.Updates(0, self.updates_dropped, records))
        return framing.encode_frame(payload, m.REPLY_BYTES_MAX)

    def has_output(self) -> bool:
        return bool(self.outbound) or bool(self.updates)

    def stats(self) -> dict:
        pid, uid, gid = self.peer
        return {"conn_id": self.conn_id, "name": self.client_name, "pid": pid, "uid": uid,
                "gid": gid, "subscribed": len(self.subscribed), "queued": len(self.updates),
                "updates_sent": self.updates_sent, "dropped": self.updates_dropped,
                "requests": self.requests, "bad_messages": self.bad_messages}

    # --- errors -------------------------------------------------------------------------------

    def _bad(self, code: int, text: str, req_id: int, *, fatal: bool) -> None:
        self.bad_messages += 1
        out_of_budget = self.bad_messages >= self.bad_messages_max
        if fatal or out_of_budget:
            suffix = "; closing" if fatal else f"; closing after {self.bad_messages} bad messages"
            self.reply(m.Error(req_id, code, _clip(text + suffix)))
            self.close(text)
            return
        self.reply(m.Error(req_id, code, _clip(text)))

    def close(self, reason: str) -> None:
        """Stop reading; the transport flushes what is queued, then closes."""
        if not self.closing:
            self.closing = True
            self.close_reason = reason


def _clip(text: str) -> str:
    return text.encode()[: m.TEXT_BYTES_MAX].decode(errors="ignore")


_HANDLERS = {
    m.Hello: ServerConnection._on_hello,
    m.ListBooks: ServerConnection._on_list,
    m.Describe: ServerConnection._on_describe,
    m.Subscribe: ServerConnection._on_subscribe,
    m.Unsubscribe: ServerConnection._on_unsubscribe,
    m.SnapshotRequest: ServerConnection._on_snapshot,
    m.StatsRequest: ServerConnection._on_stats,
}
assert set(_HANDLERS) == set(m.REQUESTS.values())
