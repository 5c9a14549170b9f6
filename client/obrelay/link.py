"""The NATS side of the relay: one connection, a bounded publishing window, the stream.

Why a window. nats-py buffers what it is given: publishes wait in its pending list and in the
socket transport while the server is slow, stopped or being reconnected to. Left alone, a relay
faster than its server would grow those buffers (or block, or fail on nats-py's pending limit).
So the link counts the bytes it has handed to nats-py and not yet seen confirmed by the server:
a PING/PONG (`flush`) confirms every byte written to the socket before the PING. One PING goes
out per quarter window of bytes (and per heartbeat), not per message, which would double the
relay's system calls. While that
count is at `inflight_bytes_max` the link says it is not `ready`, and the relay coalesces
instead of publishing (client/obrelay/books.py). A confirmation or a reconnect makes it ready again
and calls `on_ready`.

Discussion: nats-py writes the PING straight to the socket, ahead of publishes still in its
pending list. So a flush confirms `sent - pending_data_size` (what had reached the socket when
the PING was written), not everything sent; the link marks exactly that. What is buffered
outside the server is therefore at most `inflight_bytes_max` plus one book message plus one
heartbeat (heartbeats have a reserve of their own size, see `ready`).

After a reconnect the bytes in flight are unknowable (some were lost with the old socket, the
pending rest is re-sent by nats-py): the window restarts empty and the relay re-sends every
book's latest state (`on_reconnected`), which repairs both live receivers and the last-value
stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl

import nats
import nats.errors
import nats.js.errors
from nats.js import api as js_api

from obrelay.config import RelayConfig, tls_context
from obrelay.logs import log_event
from obproto import relay as wire

log = logging.getLogger("obrelay")

CONNECT_TIMEOUT_S = 2
RECONNECT_WAIT_S = 0.5
PING_INTERVAL_S = 2            # a server silent for PING_INTERVAL_S * PINGS_OUTSTANDING_MAX
PINGS_OUTSTANDING_MAX = 3      # ... is dropped and another one of the list tried
FLUSH_TIMEOUT_S = 2.0
FLUSH_RETRY_S = 0.1
CANCEL_WAIT_S = 0.5
CONFIRM_FRACTION = 4           # a PING goes out once a quarter of the window is unconfirmed
JS_TIMEOUT_S = 5.0
JS_READY_TIMEOUT_S = 30.0      # JetStream may take this long to answer after a cluster starts
JS_RETRY_S = 0.5
# "no suitable peers for placement": fewer JetStream servers than the stream's replicas, so far.
# A cluster says it for a second or two after a node answers clients and before it has joined
# as a peer (at start, or a node coming back): not yet, like a 503 while leaders are elected.
JS_NO_PEERS_ERR_CODE = 10005
_PUB_OVERHEAD_BYTES = len(b"PUB  \r\n\r\n")   # nats-py's PUB line around subject and size


class LinkError(RuntimeError):
    """The link cannot work as configured (authorisation, TLS, JetStream); not retried."""


class _PeersMissing(Exception):
    """JetStream refused the stream for want of peers (JS_NO_PEERS_ERR_CODE), for now."""


def _refusal(exc: BaseException) -> str | None:
    """Why a server refused us for good (TLS or credentials), or None for anything else."""
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    text = str(exc)
    if "authorization" in text.lower() or "authentication" in text.lower():
        return f"credentials: {text}"
    return None


async def _cancel(task: asyncio.Task) -> None:
    """Cancel `task` until it ends. Discussion: Python 3.11's wait_for, which nats-py's
    connect uses, can swallow a cancellation that lands as its inner wait completes; one
    cancel() may then leave the connect retrying forever, and the relay deaf to SIGTERM."""
    while not task.done():
        task.cancel()
        await asyncio.wait((task,), timeout=CANCEL_WAIT_S)
    with contextlib.suppress(BaseException):
        task.result()


def pub_bytes(subject: str, payload_bytes: int) -> int:
    """What one publish adds to nats-py's pending buffer: `PUB subj n\\r\\n payload \\r\\n`."""
    return _PUB_OVERHEAD_BYTES + len(subject) + len(str(payload_bytes)) + payload_bytes


class NatsLink:
    def __init__(self, config: RelayConfig, *, client_name: str):
        self.config = config
        self.client_name = client_name
        self.nc: nats.NATS | None = None
        self.on_ready = lambda: None          # the relay's wake-up
        self.on_reconnected = lambda: None    # the relay re-sends every book
        self.sent_bytes = 0                   # handed to nats-py (pub_bytes), ever
        self.acked_bytes = 0                  # confirmed by a PONG (or written off, reconnect)
        self.inflight_bytes_peak = 0
        self.reconnects = 0
        self.disconnects = 0
        self.publish_errors = 0
        self._flush_wanted = asyncio.Event()
        self._flusher: asyncio.Task | None = None
        self._closing = False
        # A PING per message would cost a write and a read each: confirm in batches.
        self._confirm_at_bytes = config.inflight_bytes_max // CONFIRM_FRACTION
        self._refused: asyncio.Future | None = None
        self._errors_seen: set[str] = set()

    # -- connecting --------------------------------------------------------------------------

    async def connect(self, stop: asyncio.Event) -> bool:
        """Connect to a server of the list, trying them in turn until one takes us (False if
        `stop` is set first). LinkError when a server refuses our TLS or credentials: trying
        again cannot fix that, the user must."""
        options = dict(
            servers=list(self.config.nats_urls), name=self.client_name,
            connect_timeout=CONNECT_TIMEOUT_S, reconnect_time_wait=RECONNECT_WAIT_S,
            max_reconnect_attempts=-1, ping_interval=PING_INTERVAL_S,
            max_outstanding_pings=PINGS_OUTSTANDING_MAX, allow_reconnect=True,
            # nats-py's own buffer while reconnecting: the window keeps us far below it
            pending_size=4 * self.config.inflight_bytes_max,
            error_cb=self._on_error, disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected, closed_cb=self._on_closed)
        tls = tls_context(self.config)
        if tls is not None:
            options["tls"] = tls
        if self.config.creds:
            options["user_credentials"] = self.config.creds
        loop = asyncio.get_running_loop()
        self._refused = loop.create_future()
        connecting = loop.create_task(nats.connect(**options))
        stopping = loop.create_task(stop.wait())
        try:
            await asyncio.wait((connecting, self._refused, stopping),
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not connecting.done():
            await _cancel(connecting)
            if self._refused.done():
                raise LinkError(self._refused.result())
            return False
        self.nc = connecting.result()
        self._flusher = loop.create_task(self._flush_loop())
        log_event(log, "nats_connected", url=self.server_url())
        return True

    async def _on_error(self, exc: BaseException) -> None:
        """nats-py's errors. Before the first connection, a refusal of our TLS or credentials
        ends `connect`; anything else (refused, unreachable) is logged once per kind and
        retried. Later they are logged: nats-py keeps reconnecting through the list."""
        refusal = _refusal(exc)
        if self.nc is None and refusal and not self._refused.done():
            self._refused.set_result(f"NATS ({', '.join(self.config.nats_urls)}) refused "
                                     f"us: {refusal}")
            return
        kind = type(exc).__name__
        if kind not in self._errors_seen:
            self._errors_seen.add(kind)
            log_event(log, "nats_retrying", level=logging.WARNING, error=refusal or repr(exc))
        else:
            log_event(log, "nats_error", level=logging.DEBUG, error=repr(exc))

    async def _on_disconnected(self) -> None:
        if self._closing:
            return
        self.disconnects += 1
        log_event(log, "nats_disconnected", level=logging.WARNING,
                  servers=",".join(self.config.nats_urls))

    async def _on_reconnected(self) -> None:
        self.reconnects += 1
        self.acked_bytes = self.sent_bytes       # unknowable: the relay re-sends every book
        log_event(log, "nats_reconnected", level=logging.WARNING, url=self.server_url(),
                  resend="every_book")
        self.on_reconnected()
        self.on_ready()

    async def _on_closed(self) -> None:
        log_event(log, "nats_closed")

    def server_url(self) -> str:
        url = self.nc.connected_url if self.nc is not None else None
        return f"{url.scheme}://{url.netloc}" if url else ""

    # -- publishing --------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    @property
    def inflight_bytes(self) -> int:
        return self.sent_bytes - self.acked_bytes

    def ready(self, reserve_bytes: int = 0) -> bool:
        """Connected, and fewer than `inflight_bytes_max` (+ `reserve_bytes`) in flight.
        Heartbeats pass a reserve of their own size, so book messages filling the window never
        silence them, and what is in flight stays under the window plus one of each."""
        nc = self.nc
        return (nc is not None and nc.is_connected and self.sent_bytes - self.acked_bytes
                < self.config.inflight_bytes_max + reserve_bytes)

    async def publish(self, subject: str, payload: bytes) -> bool:
        """Hand one message to nats-py; False (counted) if it refused it."""
        try:
            await self.nc.publish(subject, payload)
        except (nats.errors.Error, OSError) as exc:
            self.publish_errors += 1
            log_event(log, "publish_failed", level=logging.DEBUG, subject=subject, error=repr(exc))
            return False
        self.sent_bytes += pub_bytes(subject, len(payload))
        inflight = self.sent_bytes - self.acked_bytes
        if inflight > self.inflight_bytes_peak:
            self.inflight_bytes_peak = inflight
        if inflight >= self._confirm_at_bytes:
            self._flush_wanted.set()
        return True

    def confirm(self) -> None:
        """Ask the server to confirm what is in flight, however little (the heartbeat does,
        so the counters settle when the feed is quiet)."""
        if self.sent_bytes != self.acked_bytes:
            self._flush_wanted.set()

    async def _flush_loop(self) -> None:
        """Keep one PING in flight while bytes are unconfirmed; each PONG moves `acked_bytes`."""
        while True:
            await self._flush_wanted.wait()
            self._flush_wanted.clear()
            nc = self.nc
            if self.sent_bytes == self.acked_bytes:
                continue
            mark = self.sent_bytes - nc.pending_data_size
            try:
                await nc.flush(FLUSH_TIMEOUT_S)
            except (nats.errors.Error, OSError, asyncio.TimeoutError) as exc:
                log_event(log, "flush_failed", level=logging.DEBUG, error=repr(exc))
                self._flush_wanted.set()
                await asyncio.sleep(FLUSH_RETRY_S)
                continue
            was_ready = self.ready()
            self.acked_bytes = max(self.acked_bytes, min(mark, self.sent_bytes))
            if self.sent_bytes != self.acked_bytes:
                self._flush_wanted.set()
            if not was_ready and self.ready():
                self.on_ready()

    # -- the last-value stream ---------------------------------------------------------------

    async def ensure_stream(self, observer: str) -> str:
        """Create the stream keeping each subject's last message, or check and fix it.

        JetStream answers 503, or times out, while a cluster elects its leaders: that is
        retried for JS_READY_TIMEOUT_S. No responder at all means no JetStream: said at once."""
        deadline_s = asyncio.get_running_loop().time() + JS_READY_TIMEOUT_S
        while True:
            try:
                return await self._ensure_stream_once(observer)
            except _PeersMissing as exc:
                if asyncio.get_running_loop().time() > deadline_s:
                    raise LinkError(f"cannot create stream {wire.stream_name(observer)}: "
                                    f"{exc} (fewer JetStream servers than --stream-replicas "
                                    f"{self.config.stream_replicas})") from None
                log_event(log, "jetstream_retrying", error=str(exc))
                await asyncio.sleep(JS_RETRY_S)
            except (nats.js.errors.ServiceUnavailableError, nats.errors.TimeoutError) as exc:
                if getattr(exc, "code", 0) is None:      # no responders: no JetStream at all
                    raise LinkError("JetStream is not enabled for us on the NATS server (start "
                                    "nats-server with -js, or give the account JetStream), or "
                                    "pass --no-stream to relay without late join") from None
                if asyncio.get_running_loop().time() > deadline_s:
                    raise LinkError(
                        f"JetStream did not answer within {JS_READY_TIMEOUT_S:.0f} s ({exc}): is "
                        f"it enabled on the server (nats-server -js)? Or pass --no-stream to "
                        f"relay without late join") from None
                log_event(log, "jetstream_retrying", error=str(exc))
                await asyncio.sleep(JS_RETRY_S)

    async def _ensure_stream_once(self, observer: str) -> str:
        prefix = self.config.subject_prefix
        want = js_api.StreamConfig(
            name=wire.stream_name(observer), subjects=[wire.observer_wildcard(prefix, observer)],
            description=f"obrelay: the last book messages of observer {observer}",
            max_msgs_per_subject=1, discard=js_api.DiscardPolicy.OLD,
            storage=js_api.StorageType(self.config.stream_storage),
            num_replicas=self.config.stream_replicas, allow_direct=True,
            max_msg_size=wire.MESSAGE_BYTES_MAX)
        jsm = self.nc.jsm(timeout=JS_TIMEOUT_S)
        try:
            info = await jsm.stream_info(want.name)
        except nats.js.errors.NotFoundError:
            await self._js_call(jsm.add_stream, want, "create")
            log_event(log, "stream_created", stream=want.name, subjects=want.subjects[0])
            return want.name
        have = info.config
        have_storage = js_api.StorageType(have.storage).value    # the API gives a str
        if have_storage != self.config.stream_storage:
            raise LinkError(f"stream {want.name} exists with {have_storage} storage, not "
                            f"{self.config.stream_storage}: delete it or pass --stream-storage "
                            f"{have_storage}")
        if (have.subjects != want.subjects or have.max_msgs_per_subject != 1
                or not have.allow_direct or have.num_replicas != want.num_replicas):
            await self._js_call(jsm.update_stream, want, "update")
            log_event(log, "stream_updated", stream=want.name, subjects=want.subjects[0],
                      max_msgs_per_subject=1)
        return want.name

    async def _js_call(self, call, config, what: str):
        try:
            return await call(config)
        except nats.js.errors.ServiceUnavailableError:
            raise                     # transient: ensure_stream retries
        except nats.js.errors.APIError as exc:
            if exc.err_code == JS_NO_PEERS_ERR_CODE:
                raise _PeersMissing(exc.description or str(exc)) from None   # retried too
            raise LinkError(f"cannot {what} stream {config.name}: {exc}") from None

    async def last_heartbeat(self, observer: str) -> bytes | None:
        """The stream's last heartbeat of this observer (the previous relay's), if any."""
        subject = wire.heartbeat_subject(self.config.subject_prefix, observer)
        try:
            msg = await self.nc.jsm(timeout=JS_TIMEOUT_S).get_last_msg(
                wire.stream_name(observer), subject, direct=True)
        except nats.js.errors.NotFoundError:
            return None
        except (nats.errors.Error, asyncio.TimeoutError) as exc:
            # Only the clock orders this incarnation then; say so rather than wait.
            log_event(log, "previous_heartbeat_unreadable", level=logging.WARNING,
                      error=repr(exc), incarnation_from="clock")
            return None
        return msg.data

    async def close(self) -> None:
        """Flush what was published (bounded by FLUSH_TIMEOUT_S) and close."""
        self._closing = True
        if self._flusher is not None:
            self._flusher.cancel()
        if self.nc is None or self.nc.is_closed:
            return
        try:
            if self.nc.is_connected:
                await self.nc.flush(FLUSH_TIMEOUT_S)
        except (nats.errors.Error, OSError, asyncio.TimeoutError) as exc:
            log_event(log, "final_flush_failed", level=logging.WARNING, error=repr(exc))
        await self.nc.close()
