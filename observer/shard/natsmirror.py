"""The NATS side of the `nats` feed: nats-py on its own thread and asyncio loop.

Why a thread: loom is not asyncio, and nats-py (the maintained client: cluster discovery,
reconnects, TLS, credentials, JetStream) is. One thread per nats feed runs one asyncio loop with
one connection; it never touches the segment. Everything it learns goes to the feed fiber
through the feed's `Mailbox` (observer/shard/natsfeed.py), keyed by book, latest wins:

- book messages on `<prefix>.<relay>.<exchange>.<SYMBOL>`, decoded here (client/obproto/relay.py) and
  checked against their subject (a message naming another book than its subject is dropped);
- the relay's heartbeats on `<prefix>.<relay>._hb`;
- the link: up or down, with an epoch that grows on every (re)connect.

Late join and resync. After each connect the subscription exists first, then every mirrored
book's last value is fetched from the relay's JetStream stream (a direct get per book), as
docs/RELAY.md says: anything published after the fetched value arrives live, anything older is
dropped by the fiber's sequencer. A message is tagged with the epoch of its connection only
once that fetch pass is over; the fiber counts a book as confirmed on a connection by such a
message (fetched or live), so no book goes live on a new connection before its state after the
outage is known. The stream may be unavailable for a while (a cluster electing a leader after a
node died): fetches are retried while the connection lasts.

Bad input (not msgpack, unknown types, foreign names) is counted and logged once per kind; it
never reaches the fiber.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading

from obproto import relay as wire
from observer.telemetry.logs import log_event

log = logging.getLogger("observer.feeds")

CONNECT_TIMEOUT_S = 2
RECONNECT_WAIT_S = 0.25
PING_INTERVAL_S = 1            # a server silent PING_INTERVAL_S * PINGS_OUTSTANDING_MAX is
PINGS_OUTSTANDING_MAX = 2      # dropped, and the next of the list tried
FETCH_TIMEOUT_S = 2.0
FETCH_RETRY_S = 0.25
FETCH_CONCURRENCY = 32
FETCH_PASSES_MAX = 20          # then live messages alone confirm the books still missing
PENDING_MSGS_MAX = 65536       # nats-py's per-subscription queue, in front of the callback
FETCHED, LIVE = True, False


def tls_context(feed_cfg) -> ssl.SSLContext | None:
    """The client TLS context when asked for (tls:// or any TLS key): system CAs or ca_file."""
    wants = (feed_cfg.ca_file or feed_cfg.tls_cert
             or any(url.startswith("tls://") for url in feed_cfg.url))
    if not wants:
        return None
    ctx = ssl.create_default_context(cafile=feed_cfg.ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if feed_cfg.tls_cert:
        ctx.load_cert_chain(feed_cfg.tls_cert, feed_cfg.tls_key)
    return ctx


async def _cancel(task: asyncio.Task) -> None:
    """Cancel `task` until it ends: Python 3.11's wait_for, inside nats-py's connect, can
    swallow one cancellation (client/obrelay/link.py has the same guard)."""
    while not task.done():
        task.cancel()
        await asyncio.wait((task,), timeout=0.5)
    with contextlib.suppress(BaseException):
        task.result()


class NatsThread:
    def __init__(self, feed_cfg, names, mailbox):
        self.cfg = feed_cfg
        prefix, relay = feed_cfg.subject_prefix, feed_cfg.relay
        self.name_of = {wire.book_subject(prefix, relay, name): name for name in names}
        self.subject_of = {name: subject for subject, name in self.name_of.items()}
        self.hb_subject = wire.heartbeat_subject(prefix, relay)
        self.wildcard = wire.observer_wildcard(prefix, relay)
        self.stream = wire.stream_name(relay)
        self.mailbox = mailbox
        self.epoch = 0                 # of the current connection
        self.tag = -1                  # the epoch live messages are tagged with (-1: fetching)
        self.link_events = 0
        self.rejected = 0
        self._kinds_logged: set = set()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.nc = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._fetching: asyncio.Task | None = None
        self.thread = threading.Thread(target=self._main, name=f"nats-{relay}", daemon=True)

    # -- from the loom side -----------------------------------------------------------------

    def start(self) -> None:
        self.thread.start()
        self._ready.wait()

    def stop(self) -> None:
        with contextlib.suppress(RuntimeError):           # the loop has ended already
            self.loop.call_soon_threadsafe(self._stop.set)

    def join(self, timeout_s: float) -> None:
        self.thread.join(timeout_s)

    def fetch(self, names) -> None:
        """Fetch these books' stream values (a heartbeat says their last message was lost)."""
        names = list(names)
        with contextlib.suppress(RuntimeError):
            self.loop.call_soon_threadsafe(self._fetch_later, names)

    # -- the thread -------------------------------------------------------------------------

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        nc = await self._connect()
        if nc is None:
            return
        try:
            await self._stop.wait()
        finally:
            with contextlib.suppress(Exception):
                await nc.close()

    async def _connect(self):
        """Connect to a server of the list, retrying until one takes us or we are stopped."""
        import nats

        options = dict(
            servers=list(self.cfg.url), name=f"observer-mirror-{self.cfg.relay}",
            connect_timeout=CONNECT_TIMEOUT_S, reconnect_time_wait=RECONNECT_WAIT_S,
            max_reconnect_attempts=-1, allow_reconnect=True, ping_interval=PING_INTERVAL_S,
            max_outstanding_pings=PINGS_OUTSTANDING_MAX, error_cb=self._on_error,
            disconnected_cb=self._on_disconnected, reconnected_cb=self._on_reconnected)
        try:
            tls = tls_context(self.cfg)
        except (ssl.SSLError, OSError) as exc:
            log_event(log, "nats_tls_unusable", level=logging.ERROR, relay=self.cfg.relay, error=str(exc))
            return None
        if tls is not None:
            options["tls"] = tls
        if self.cfg.creds:
            options["user_credentials"] = self.cfg.creds
        while not self._stop.is_set():
            connecting = self.loop.create_task(nats.connect(**options))
            stopping = self.loop.create_task(self._stop.wait())
            await asyncio.wait((connecting, stopping), return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            if not connecting.done():             # stopped while nats-py was still trying
                await _cancel(connecting)
                return None
            try:
                nc = connecting.result()
            except Exception as exc:             # refused, or no server: retried, logged once
                self._log_once(exc, "cannot connect")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), RECONNECT_WAIT_S)
                continue
            self.nc = nc
            await nc.subscribe(self.wildcard, cb=self._on_msg, pending_msgs_limit=PENDING_MSGS_MAX)
            await self._connected()
            return nc
        return None

    async def _connected(self) -> None:
        self.epoch += 1
        self.tag = -1
        self._link(True)
        log_event(log, "nats_connected", relay=self.cfg.relay, server=self._server())
        if self._fetching is not None:
            self._fetching.cancel()
        self._fetching = self.loop.create_task(self._fetch_all(self.epoch))

    async def _on_disconnected(self) -> None:
        self.tag = -1
        self._link(False)
        if self._fetching is not None:
            self._fetching.cancel()

    async def _on_reconnected(self) -> None:
        await self._connected()

    async def _on_error(self, exc) -> None:
        self._log_once(exc, "NATS")

    def _link(self, up: bool) -> None:
        self.link_events += 1
        self.mailbox.put("_link", (up, self.epoch), (self.link_events,))

    def _server(self) -> str:
        url = getattr(self.nc, "connected_url", None)
        return f"{url.scheme}://{url.netloc}" if url else "?"

    def _log_once(self, exc, what: str) -> None:
        kind = f"{what}:{type(exc).__name__}"
        if kind not in self._kinds_logged:
            self._kinds_logged.add(kind)
            log_event(log, "nats_retrying", level=logging.WARNING, relay=self.cfg.relay, what=what,
                      error=str(exc) or repr(exc))

    # -- messages ---------------------------------------------------------------------------

    async def _on_msg(self, msg) -> None:
        try:
            decoded = wire.decode(msg.data)
        except wire.RelayMessageError as exc:
            return self._reject(f"bad message on {msg.subject[:120]}: {exc}")
        if type(decoded) is wire.Heartbeat:
            if msg.subject != self.hb_subject:
                return self._reject(f"a heartbeat on {msg.subject[:120]}")
            self.mailbox.put("_hb", decoded, (decoded.incarnation, decoded.hb_seq))
            return None
        if self.name_of.get(msg.subject) != decoded.name:
            if msg.subject in self.name_of:           # a mirrored subject, a foreign name
                return self._reject(f"book {decoded.name[:80]!r} on {msg.subject[:120]}")
            return None                               # a book we do not mirror
        self._offer(decoded, self.tag, LIVE)
        return None

    def _offer(self, msg: wire.BookMessage, tag: int, fetched: bool) -> None:
        self.mailbox.put(msg.name, (tag, msg, fetched), (msg.incarnation, msg.relay_seq, tag))

    def _reject(self, why: str) -> None:
        self.rejected += 1
        kind = why.split(" ", 2)[1]
        if kind not in self._kinds_logged:
            self._kinds_logged.add(kind)
            log_event(log, "nats_message_dropped", level=logging.WARNING, relay=self.cfg.relay,
                      why=why, note="counted, logged once")

    # -- the last-value stream --------------------------------------------------------------

    async def _fetch_all(self, epoch: int) -> None:
        """Every book's stream value, then live messages count for this connection."""
        await self._fetch(list(self.subject_of), epoch)
        if epoch == self.epoch:
            self.tag = epoch

    def _fetch_later(self, names) -> None:
        self.loop.create_task(self._fetch(names, self.epoch))

    async def _fetch(self, names, epoch: int) -> None:
        import nats.errors
        import nats.js.errors

        jsm = self.nc.jsm(timeout=FETCH_TIMEOUT_S)
        pending = list(names)
        for _ in range(FETCH_PASSES_MAX):
            if not pending or epoch != self.epoch or not self.nc.is_connected:
                return
            again = []
            for start in range(0, len(pending), FETCH_CONCURRENCY):
                batch = pending[start:start + FETCH_CONCURRENCY]
                results = await asyncio.gather(*(self._get_last(jsm, name) for name in batch),
                                               return_exceptions=True)
                for name, result in zip(batch, results):
                    if isinstance(result, (nats.js.errors.NotFoundError,
                                           nats.errors.NoRespondersError)):
                        continue                  # no value, or no stream: live messages say
                    if isinstance(result, (nats.errors.Error, asyncio.TimeoutError)):
                        self._log_once(result, "stream fetch")
                        again.append(name)        # electing, or the node went: again
                    elif isinstance(result, BaseException):
                        raise result
                    elif result is not None and epoch == self.epoch:
                        self._offer(result, epoch, FETCHED)
            pending = again
            if pending:
                await asyncio.sleep(FETCH_RETRY_S)
        if pending:
            log_event(log, "nats_last_values_missing", level=logging.WARNING, relay=self.cfg.relay,
                      books=len(pending), tries=FETCH_PASSES_MAX,
                      note="live messages will resync them")

    async def _get_last(self, jsm, name: str):
        raw = await jsm.get_last_msg(self.stream, self.subject_of[name], direct=True)
        try:
            msg = wire.decode(raw.data)
        except wire.RelayMessageError as exc:
            self._reject(f"bad stream value of {name}: {exc}")
            return None
        if type(msg) is not wire.BookMessage or msg.name != name:
            self._reject(f"stream value of {name} that is not its book")
            return None
        return msg
