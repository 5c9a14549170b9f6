"""The control server's protocol machine for one connection: bytes in, replies and pushes out.

Why sans-IO: everything that decides what a client gets (framing, decoding, the hello gate,
error replies, the bad-message budget, subscriptions, the bounded update queue and its drop count)
lives here with no socket and no loom, so tests drive it byte by byte through an in-memory pair and
the transport (`control.py`) stays a thin loop of recv, dispatch, send.

What one connection may cost is fixed when it is created: one frame of input
(`REQUEST_BYTES_MAX`) plus the chunk it arrived in, replies waiting to be sent up to the
high-water mark (`OUTBOUND_BYTES_HIGH` bytes or `OUTBOUND_FRAMES_HIGH` frames) plus the one reply
that crossed it, and `queue_records_max` pushed update records.

Back pressure, never disconnection. Past the high-water mark the machine is `paused`: it stops
decoding (what was received stays in the frame decoder) and its transport stops receiving, so a
client that pipelines requests faster than it reads the replies only fills its own socket
buffers. The machine resumes (`resume()`) once the transport has taken the replies down to the
low-water mark. It also serves at most `MESSAGES_PER_BATCH_MAX` requests per call and then says
`backlogged`, so that the transport lets the rest of the loop run between batches. A subscriber
that reads too slowly loses update records (counted, reported in every `updates` message and in
stats) and the shard that produced them never waits.

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

from obproto import framing
from obproto import messages as m

log = logging.getLogger("observer.server")

BAD_MESSAGES_MAX = 3
OUTBOUND_BYTES_HIGH = 256 * 1024      # unsent replies past this: stop decoding requests
OUTBOUND_BYTES_LOW = 64 * 1024        # ...until the transport has sent them down to this
OUTBOUND_FRAMES_HIGH = 1024           # the same in frames (small replies cost objects too)
OUTBOUND_FRAMES_LOW = 256
MESSAGES_PER_BATCH_MAX = 32           # requests served per call: a pipelining client shares
                                      # the loop (and an in-process shard) in turns
# The most unsent replies ever held: the high-water mark, the reply that crossed it, and the
# last error a closing connection may add.
OUTBOUND_BYTES_MAX = (OUTBOUND_BYTES_HIGH + framing.HEADER_BYTES + m.REPLY_BYTES_MAX
                      + framing.HEADER_BYTES + 2 * m.TEXT_BYTES_MAX)
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
                 bad_messages_max: int = BAD_MESSAGES_MAX, idle_s: float = 0.0,
                 codec: m.Codec | None = None):
        self.catalog = catalog
        self.conn_id = conn_id
        self.peer = peer                      # (pid, uid, gid) from SO_PEERCRED
        self.client_name = ""
        self.version = 0                      # 0 until hello
        self.idle_s = idle_s                  # told to the client in `welcome` (0: no limit)
        self.subscribed: set[int] = set()
        self.updates = collections.deque(maxlen=queue_records_max)
        self.queue_records_max = queue_records_max
        self.updates_dropped = 0
        self.updates_sent = 0
        self.requests = 0
        self.messages_received = 0            # complete frames, good or bad (the idle clock)
        self.bad_messages = 0
        self.bad_messages_max = bad_messages_max
        self.outbound: collections.deque[Outbound] = collections.deque()
        self.outbound_bytes = 0              # bytes in `outbound`; pop_outbound subtracts
        self.paused = False                  # past the high-water mark: decode nothing more
        self.backlogged = False              # a batch decoded; more may wait (call resume())
        self.closing = False
        self.close_reason = ""
        self._decoder = framing.FrameDecoder(m.REQUEST_BYTES_MAX)
        # Encoding is synchronous and copies out, so one codec may serve every connection of a
        # server (its packer's buffer is most of a connection's memory otherwise).
        self._codec = codec if codec is not None else m.server_codec()

    # --- input --------------------------------------------------------------------------------

    def receive_data(self, data) -> None:
        """Feed received bytes; replies are queued in `outbound`. b"" means the peer closed.

        The bytes are copied: `data` may be the transport's buffer, reused after this returns.
        While `paused`, they are only buffered (the transport receives nothing more then)."""
        if self.closing:
            return
        if not data:
            self.close("peer closed")
            return
        self._decoder.receive_data(data)
        self._decode()

    def resume(self) -> None:
        """Decode what is buffered: after a pause once the replies drained, or the next batch
        after `backlogged` (the transport calls it after letting the loop run)."""
        if not self.paused and not self.closing:
            self._decode()

    def _decode(self) -> None:
        self.backlogged = False
        for _ in range(MESSAGES_PER_BATCH_MAX):
            if self.closing or self.paused:
                return
            try:
                payload = self._decoder.next_frame()
            except framing.FrameError as exc:
                self.messages_received += 1
                self._bad(m.ErrorCode.BAD_FRAME, str(exc), 0, fatal=exc.fatal)
                continue
            if payload is None:
                return
            self.messages_received += 1
            self._receive_payload(payload)
        # Maybe more complete requests: a turn for the others first (a pause says more).
        self.backlogged = not self.paused and not self.closing

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
            log.exception("control_request_failed", {"request": type(request).__name__})
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
        fds = tuple(self.catalog.handout_fds(self.conn_id)) if req.want_fds else ()
        welcome = m.Welcome(req.req_id, version, info["server_name"], info["pid"],
                            info["generation"], info["segment_bytes"], info["layout_version"],
                            info["layout_hash"], info["n_eventfds"], bool(fds),
                            float(info["heartbeat_period_s"]), float(self.idle_s))
        self.reply(welcome, fds)     # the fds were made for this client alone: the frame owns them

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

    def _on_ping(self, req: m.Ping) -> None:
        """No reply: receiving it restarted the idle clock (`messages_received`), all it is for."""

    def _resolve_names(self, names: list) -> set[int]:
        books = self.catalog.book_keys()
        if not names:
            return {b[0] for b in books}
        return {m.resolve_book(name, books)[0] for name in names}

    # --- output -------------------------------------------------------------------------------

    def reply(self, msg, fds: tuple = ()) -> None:
        """Queue one reply, owning `fds`; past the high-water mark, pause decoding (see the
        essay)."""
        out = Outbound(b"", fds)
        try:
            out.data = framing.encode_frame(self._codec.encode(msg), m.REPLY_BYTES_MAX)
        finally:
            if not out.data:               # encoding raised: no frame owns the fds
                out.release()
        self.outbound_bytes += len(out.data)
        self.outbound.append(out)
        assert self.outbound_bytes <= OUTBOUND_BYTES_MAX
        if self.outbound_bytes >= OUTBOUND_BYTES_HIGH or len(self.outbound) >= OUTBOUND_FRAMES_HIGH:
            self.paused = True

    def pop_outbound(self) -> Outbound:
        """The next frame to send (the transport calls this, never outbound.popleft); at the
        low-water mark `paused` clears and the transport calls `resume()`."""
        out = self.outbound.popleft()
        self.outbound_bytes -= len(out.data)
        assert self.outbound_bytes >= 0
        if (self.paused and self.outbound_bytes <= OUTBOUND_BYTES_LOW
                and len(self.outbound) <= OUTBOUND_FRAMES_LOW):
            self.paused = False
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
                "requests": self.requests, "bad_messages": self.bad_messages,
                "unsent_bytes": self.outbound_bytes, "paused": self.paused}

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

    def close_with_error(self, code: int, text: str) -> None:
        """A close the server decides: the client is told why first (an `error`, req_id 0)."""
        if not self.closing:
            self.reply(m.Error(0, code, _clip(text)))
            self.close(text)

    def release(self) -> None:
        """The connection is gone: drop what it buffered now, not when the collector runs."""
        self.close(self.close_reason or "released")
        self._decoder = framing.FrameDecoder(1)
        self.release_outbound()                # fds made for this client and never sent
        self.outbound_bytes = 0
        self.updates.clear()
        self.subscribed = set()


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
    m.Ping: ServerConnection._on_ping,
}
assert set(_HANDLERS) == set(m.REQUESTS.values())
