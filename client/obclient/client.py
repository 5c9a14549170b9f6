"""The client a strategy links: connect to the observer, read its books, follow their updates.

Why this shape. The control socket is only the way in: one `hello` returns the segment's
read-only fd and one wake fd per shard (SCM_RIGHTS), and from then on books are read from shared
memory (`SegmentReader`) and updates followed on the rings, with no round trip to the observer.
The socket stays open for one more job: it is how a dead observer is seen at once (C6, C9). The
client keeps its own epoll, stable for its whole life (so `fileno()` can go to asyncio's
`add_reader` once), holding the wake fds with EPOLLET (never read) and the control socket. An
event loop watches that epoll level-triggered, so its reader must take the edges off
(`take_wakeups()`, an `epoll_wait` with timeout 0) or be called again at once (client/obclient/aio.py).

Liveness and reattach (C9). The observer is considered gone when the control socket hangs up,
the segment is marked closed, or the header heartbeat is older than `stale_after_s`. The client
then drops the segment, reports every book stale (a `snapshot` returns the last copy with its
stale flag set; `updates` yields one KIND_STALE record per followed book), and tries to attach
again every `reattach_period_s`. A new observer means a new segment and generation: book
indexes are resolved again by name, and `updates` yields a KIND_RESYNC record per followed book
from the new slots before going on.

Blocking and busy-poll. `updates()` waits in epoll (blocking) or spins on the ring heads
(`busy_poll=True`, for a client pinned to its own core); both wake at least every
`liveness_check_s` to check the heartbeat and the socket. A wake-up is a hint: the rings are
always checked before and after waiting.

Idle limit (protocol version 2). The observer closes a connection that has no subscription and
sends nothing for `idle_s` (told in `welcome`), so a peer cannot hold a slot by saying nothing.
This client holds its socket only to see the observer die, and may say nothing for hours; so the
liveness check, which every call and every wait already reaches at least every
`LIVENESS_CHECK_S`, also sends a constant 11-byte `ping` once half of `idle_s` has passed since
the last message (one comparison against the clock value it read anyway). An application that
makes no call for longer than `idle_s` is closed with IDLE; its next call reattaches at once, as
after an observer restart (a stream reports its books stale, then resynced).

Refusals. A server that refuses the connection at hello (BUSY: a connection limit, DENIED: the
allow-list, VERSION_MISMATCH) says why in an `error`; `attach` raises `ServerRefused` with its
code and its text, also when the refusal and the close arrived before our hello was sent.

The sans-IO protocol machine is client/obclient/protocol.py; this module is its blocking transport.
"""

from __future__ import annotations

import array
import os
import select
import socket
import time

from obclient.aio import aupdates
from obclient.errors import (AmbiguousBook, BookNotFound, IncompatibleObserver,
                             ObserverUnavailable, RequestFailed, ServerRefused, book_error)
from obclient.protocol import ClientProtocol, ProtocolError
from obproto.segment import SegmentReader
from obproto.snapshot import BookSnapshot, Update, check_depth
from obclient.stream import LIVENESS_CHECK_S, UpdateStream
from obproto import layout
from obproto import messages as m

CONNECT_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 5.0
REATTACH_PERIOD_S = 0.2
REATTACH_TIMEOUT_S = 0.5       # a background reattach attempt waits at most this for hello
STALE_AFTER_S = 1.0            # heartbeat age past which the observer counts as gone
HEARTBEATS_MISSED_MAX = 5      # ...and never fewer than this many of its heartbeat periods
RECV_BYTES_MAX = 256 * 1024
FDS_MAX = 253                  # Linux SCM_MAX_FD
_EPOLL_EVENTS_MAX = 64


def connect(socket_path: str | None = None, *, client_name: str = "obclient",
            timeout_s: float = CONNECT_TIMEOUT_S, busy_poll: bool = False,
            stale_after_s: float = STALE_AFTER_S) -> "Client":
    """Connect to the observer (default socket: `obproto.messages.default_socket_path()`)."""
    client = Client(socket_path or m.default_socket_path(), client_name=client_name,
                    timeout_s=timeout_s, busy_poll=busy_poll, stale_after_s=stale_after_s)
    try:
        client.attach()
    except BaseException:
        client.close()
        raise
    return client


class _Attachment:
    """One observer generation: its socket, protocol machine, segment reader and books."""

    def __init__(self, sock, proto, welcome, reader):
        self.sock = sock
        self.proto = proto
        self.welcome = welcome
        self.reader = reader
        self.books = reader.books()
        self.generation = reader.generation
        self._index_of: dict[str, int] = {}
        # Ping once this long passed since our last message (never, for a server with no limit).
        idle_s = welcome.idle_s if welcome.version >= 2 else 0.0
        self.ping_after_s = idle_s * m.PING_AFTER_IDLE_FRACTION if idle_s > 0 else float("inf")
        self.ping_due_s = time.monotonic() + self.ping_after_s
        self.pings = 0

    def sent_message(self, now_s: float) -> None:
        """Any message restarts the server's idle clock, so the next ping is due later."""
        self.ping_due_s = now_s + self.ping_after_s

    def ping(self, now_s: float) -> None:
        """The constant ping frame, without blocking; a failure shows as a hang-up next."""
        try:
            sent = self.sock.send(m.PING_FRAME, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            if sent < len(m.PING_FRAME):      # (a full send buffer, never seen): keep framing
                self.sock.sendall(m.PING_FRAME[sent:])
        except OSError:
            return
        self.pings += 1
        self.sent_message(now_s)

    def index_of(self, name: str) -> int:
        """The book index of `name` in this generation (resolved once per name)."""
        index = self._index_of.get(name)
        if index is None:
            try:
                index = m.resolve_book(name, self.books).book_index
            except m.BookNameError as exc:
                raise book_error(exc) from None
            self._index_of[name] = index
        return index

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class Client:
    """See the module essay. Get one with `obclient.connect()`."""

    def __init__(self, socket_path: str, *, client_name: str = "obclient",
                 timeout_s: float = CONNECT_TIMEOUT_S, busy_poll: bool = False,
                 stale_after_s: float = STALE_AFTER_S,
                 reattach_period_s: float = REATTACH_PERIOD_S):
        self.socket_path = socket_path
        self.client_name = client_name
        self.timeout_s = timeout_s
        self.busy_poll = busy_poll
        self.stale_after_s = stale_after_s
        self.reattach_period_s = reattach_period_s
        self._epoll = select.epoll()
        self._att: _Attachment | None = None
        self._last_try_s = 0.0
        self.liveness_due_s = 0.0
        self._last_snapshots: dict[str, BookSnapshot] = {}
        self.attaches = 0
        self.detaches = 0
        self.detach_reason = ""
        self._aio_waker = None          # client/obclient/aio.py: the event loop reader, if any

    # -- attaching ---------------------------------------------------------------------------

    @property
    def attached(self) -> bool:
        return self._att is not None

    @property
    def generation(self) -> int:
        return self._att.generation if self._att else 0

    def attach(self, timeout_s: float | None = None) -> None:
        """Connect, handshake, map the segment. Raises ObserverUnavailable."""
        assert self._att is None
        self._last_try_s = time.monotonic()
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        sock = _connect_socket(self.socket_path, timeout_s)
        try:
            self._att = self._handshake(sock, timeout_s)
        except ObserverUnavailable:          # an OSError too, and already says why
            sock.close()
            raise
        except (OSError, ProtocolError) as exc:
            # An observer killed or stopping while we say hello resets the connection (our
            # hello unread) or cuts a reply: it is absent, as for a refused connect (C9).
            sock.close()
            raise ObserverUnavailable(f"observer at {self.socket_path} went away during the "
                                      f"handshake: {exc}") from None
        except BaseException:
            sock.close()
            raise
        for fd in self._att.reader.wake_fds:
            self._epoll.register(fd, select.EPOLLIN | select.EPOLLET)
        self._epoll.register(sock.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
        self.attaches += 1

    def _handshake(self, sock: socket.socket, timeout_s: float) -> _Attachment:
        proto = ClientProtocol(self.client_name)
        req_id, data = proto.hello(want_fds=True)
        fds: list[int] = []
        try:
            try:
                sock.sendall(data)
                welcome = _await_reply(sock, proto, req_id, timeout_s, fds)
            except (OSError, ProtocolError):
                # A refusal is written and the socket closed at once, maybe before our hello
                # went out (EPIPE) or was read (a reset): the reason is still in our buffer.
                self._raise_if_refused(sock, proto)
                raise
            if type(welcome) is m.Error:
                raise ServerRefused(self.socket_path, welcome.code, welcome.message)
            if not welcome.fds_passed or len(fds) != 1 + welcome.n_eventfds:
                raise ObserverUnavailable(f"observer at {self.socket_path} passed {len(fds)} fds, "
                                          f"expected {1 + welcome.n_eventfds}")
            try:
                reader = SegmentReader(fds[0], fds[1:], own_fds=True)
            except layout.LayoutError as exc:
                raise IncompatibleObserver(f"observer at {self.socket_path} is incompatible "
                                           f"with this client: {exc}") from None
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        return _Attachment(sock, proto, welcome, reader)

    def _raise_if_refused(self, sock: socket.socket, proto: ClientProtocol) -> None:
        """ServerRefused if the server said why it is closing us (BUSY, DENIED...)."""
        _drain(sock, proto)
        for error in proto.unsolicited_errors:
            if error.code in m.ErrorCode.REFUSALS:
                raise ServerRefused(self.socket_path, error.code, error.message) from None

    def _detach(self, reason: str, *, reattach_now: bool = False) -> None:
        att, self._att = self._att, None
        if att is None:
            return
        for fd in (*att.reader.wake_fds, att.sock.fileno()):
            try:
                self._epoll.unregister(fd)
            except (OSError, ValueError):
                pass
        att.close()
        self.detaches += 1
        self.detach_reason = reason
        # The first reattach waits one period (an observer that went away takes a moment to
        # come back), unless the observer is there and only closed an idle connection.
        self._last_try_s = 0.0 if reattach_now else time.monotonic()

    def _ensure_attached(self, *, force: bool = False) -> bool:
        """Attached now? Tries to reattach at most every reattach_period_s (or now if forced).

        Liveness is checked at most every LIVENESS_CHECK_S (a clock read otherwise), or at once
        when `liveness_due_s` was reset because the control socket fired: a read of shared
        memory must not cost a syscall.
        """
        if self._att is not None:
            now_s = time.monotonic()
            if force or now_s >= self.liveness_due_s:
                self.liveness_due_s = now_s + LIVENESS_CHECK_S
                self._check_liveness()
                att = self._att
                if att is not None and now_s >= att.ping_due_s:
                    att.ping(now_s)
        if self._att is not None:
            return True
        if not force and time.monotonic() - self._last_try_s < self.reattach_period_s:
            return False
        try:
            self.attach(timeout_s=self.timeout_s if force else REATTACH_TIMEOUT_S)
        except (ObserverUnavailable, OSError, ProtocolError):
            return False
        return True

    def _check_liveness(self) -> None:
        """Detach if the observer is gone (socket hang-up, closed segment, stale heartbeat), or
        closed this connection for being idle (then reattach at once)."""
        att = self._att
        reason = self._service_socket(att)
        if reason is None and att.reader.closed:
            reason = "observer shut down"
        stale_after_s = max(self.stale_after_s,
                            HEARTBEATS_MISSED_MAX * att.welcome.heartbeat_period_s)
        if reason is None and att.reader.heartbeat_age_s() > stale_after_s:
            reason = f"heartbeat older than {stale_after_s} s"
        if reason is None:
            return
        last_error = att.proto.unsolicited_errors[-1] if att.proto.unsolicited_errors else None
        idle = last_error is not None and last_error.code == m.ErrorCode.IDLE
        if last_error is not None:
            reason = f"{reason}: {m.ErrorCode.NAMES.get(last_error.code)}: {last_error.message}"
        self._detach(reason, reattach_now=idle)

    def _service_socket(self, att: _Attachment) -> str | None:
        """Read whatever the server pushed without blocking; a reason if it hung up."""
        while True:
            try:
                data = att.sock.recv(RECV_BYTES_MAX, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return None
            except OSError as exc:
                return f"control socket failed: {exc}"
            if not data:
                return "control socket closed by the observer"
            try:
                att.proto.receive_data(data)
            except ProtocolError as exc:
                return str(exc)

    # -- requests ----------------------------------------------------------------------------

    def request(self, cls, *fields):
        """Send one request and wait for its reply; raises RequestFailed on an error reply."""
        if not self._ensure_attached(force=True):
            raise ObserverUnavailable(f"no observer at {self.socket_path}")
        att = self._att
        req_id, data = att.proto.request(cls, *fields)
        try:
            att.sock.sendall(data)
            att.sent_message(time.monotonic())
            reply = _await_reply(att.sock, att.proto, req_id, self.timeout_s, None)
        except (OSError, ProtocolError) as exc:
            self._detach(f"request failed: {exc}")
            raise ObserverUnavailable(f"observer at {self.socket_path} went away: {exc}") from None
        if type(reply) is m.Error:
            raise RequestFailed(reply.code, reply.message)
        return reply

    def stats(self) -> m.Stats:
        return self.request(m.StatsRequest)

    def subscribe(self, names=()) -> list[int]:
        """Ask the server to push update records for these books over the socket."""
        return self.request(m.Subscribe, list(names)).books

    def pushed_updates(self, timeout_s: float | None = None):
        """Yield update records pushed over the socket (after `subscribe`); returns after
        `timeout_s` without one, or when the observer goes away."""
        deadline_s = None if timeout_s is None else time.monotonic() + timeout_s
        while self._att is not None:
            proto = self._att.proto
            make = self._att.reader.record_type
            while proto.pushed:
                for record in proto.pushed.popleft().records:
                    yield make(*record[: len(Update._fields)])
            remaining_s = None if deadline_s is None else deadline_s - time.monotonic()
            if remaining_s is not None and remaining_s <= 0:
                return
            if not _readable(self._att.sock, remaining_s):
                return
            reason = self._service_socket(self._att)
            if reason is not None:
                self._detach(reason)

    # -- books -------------------------------------------------------------------------------

    def books(self) -> list:
        """Every book of the observer (`BookInfo`: book_index, exchange, symbol, ...)."""
        if not self._ensure_attached(force=True):
            raise ObserverUnavailable(f"no observer at {self.socket_path}")
        return list(self._att.books)

    def book(self, name: str) -> "Book":
        """A handle on one book, named `exchange:SYMBOL` or `SYMBOL` (when one venue has it),
        in the normalised or the exchange's own spelling, any case (`kraken:BTC/USD`,
        `coinbase:btc-usd`). BookNotFound if none matches, AmbiguousBook if several do."""
        info = self._resolve(name)
        return Book(self, info.name, info)

    def _resolve(self, name: str):
        try:
            return m.resolve_book(name, self.books())
        except m.BookNameError as exc:
            raise book_error(exc) from None

    def snapshot(self, name: str, depth: int | None = None) -> BookSnapshot:
        """A consistent copy of book `name`, at most `depth` levels a side (0 or None: all;
        negative or not an integer: ValueError); the last copy, marked stale, if the observer
        is gone (ObserverUnavailable if there never was one)."""
        check_depth(depth)                        # the same error attached or not
        if self._ensure_attached():
            snap = self._att.reader.snapshot(self._att.index_of(name), depth)
            self._last_snapshots[name] = snap
            return snap
        last = self._last_snapshots.get(name)
        if last is None:
            raise ObserverUnavailable(f"no observer at {self.socket_path}")
        last.flags |= layout.FLAG_STALE
        return last

    # -- updates -----------------------------------------------------------------------------

    def updates(self, names=None, idle_timeout_s: float | None = None, *,
                busy_poll: bool | None = None, timeout_s: float | None = None):
        """Yield `Update` records for the named books (None: all) as they arrive.

        `idle_timeout_s`: return once that many seconds pass without a record (None: never);
        `timeout_s` is its older name. Survives observer restarts: yields KIND_STALE per book
        when it goes, KIND_RESYNC per book when a new one is attached. Names are resolved at
        once (BookNotFound, AmbiguousBook).
        """
        idle_timeout_s = _idle_timeout(idle_timeout_s, timeout_s)
        return self.stream(names, busy_poll=busy_poll).iterate(idle_timeout_s)

    def aupdates(self, names=None, idle_timeout_s: float | None = None):
        """`async for update in client.aupdates(names)`: `updates()` for asyncio, sleeping in
        the event loop between records (client/obclient/aio.py)."""
        return aupdates(self, names, idle_timeout_s)

    def stream(self, names=None, *, busy_poll: bool | None = None) -> UpdateStream:
        """A persistent cursor over the named books' updates: `poll()` never blocks (for an
        event loop woken by `fileno()`), `wait(timeout_s)`, `iterate(timeout_s)`."""
        spin = self.busy_poll if busy_poll is None else busy_poll
        return UpdateStream(self, names, busy_poll=spin)

    def fileno(self) -> int:
        """An fd that becomes readable on any update or observer event, for an event loop's
        reader (stable for the client's life). When it fires, call `take_wakeups()` (else it
        stays readable) and then `poll()` on a `stream()` kept across wake-ups; also call them
        every LIVENESS_CHECK_S, as an observer that went away makes it fire no more."""
        return self._epoll.fileno()

    def take_wakeups(self) -> int:
        """Consume the wake-ups pending on `fileno()`, without blocking, so that it stops being
        readable until the next one; returns how many. A control-socket event is read at once
        (a hang-up detaches: the next poll reports the books stale)."""
        taken = 0
        sock_fd = self._att.sock.fileno() if self._att is not None else -1
        sock_fired = False
        while True:
            events = self._epoll.poll(0, _EPOLL_EVENTS_MAX)
            taken += len(events)
            sock_fired = sock_fired or any(fd == sock_fd for fd, _ in events)
            if len(events) < _EPOLL_EVENTS_MAX:
                break
        if sock_fired and self._att is not None:
            # The socket is level-triggered: read it now (a hang-up detaches), or the fd would
            # stay readable until some poll came round to it.
            self.liveness_due_s = time.monotonic() + LIVENESS_CHECK_S
            self._check_liveness()
        return taken

    def close(self) -> None:
        waker, self._aio_waker = self._aio_waker, None
        if waker is not None and not waker.loop.is_closed():
            waker.loop.remove_reader(waker.fd)       # before the fd number can be reused
        self._detach("closed by the caller")
        self._epoll.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Book:
    """A named book of one client: its snapshots follow the observer across restarts.
    `name` is `exchange:SYMBOL`; `info` the BookInfo it had when resolved (native spelling)."""

    def __init__(self, client: Client, name: str, info=None):
        self.client = client
        self.name = name
        self.info = info

    def snapshot(self, depth: int | None = None) -> BookSnapshot:
        """A consistent copy, at most `depth` levels a side (0 or None: all)."""
        return self.client.snapshot(self.name, depth)

    def __repr__(self) -> str:
        return f"Book({self.name!r})"


def _idle_timeout(idle_timeout_s, timeout_s):
    """`idle_timeout_s`, or `timeout_s`, its older name (not both)."""
    if timeout_s is None:
        return idle_timeout_s
    if idle_timeout_s is not None:
        raise TypeError("updates() takes idle_timeout_s or timeout_s (its older name), not both")
    return timeout_s


# -- socket helpers ------------------------------------------------------------------------------

def _connect_socket(path: str, timeout_s: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout_s)
    try:
        sock.connect(path)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        sock.close()
        raise ObserverUnavailable(f"no observer at {path} ({exc.strerror.lower()}); "
                                  f"is it running? (--socket or ${m.SOCKET_ENV})") from None
    except OSError as exc:
        sock.close()
        raise ObserverUnavailable(f"cannot connect to {path}: {exc}") from None
    sock.settimeout(None)
    return sock


def _readable(sock: socket.socket, timeout_s: float | None) -> bool:
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(None if timeout_s is None else max(0, int(timeout_s * 1000))))


def _await_reply(sock, proto: ClientProtocol, req_id: int, timeout_s: float, fds: list | None):
    """Read until the reply to `req_id` arrives; collects passed fds into `fds` (None: refuse
    any, closing them)."""
    deadline_s = time.monotonic() + timeout_s
    while (reply := proto.take_reply(req_id)) is None:
        remaining_s = deadline_s - time.monotonic()
        if remaining_s <= 0 or not _readable(sock, remaining_s):
            raise ObserverUnavailable(f"no reply from the observer within {timeout_s} s")
        data, got_fds = _recv_with_fds(sock)
        if fds is None:
            for fd in got_fds:
                os.close(fd)
        else:
            fds.extend(got_fds)
        if not data:
            raise ObserverUnavailable("the observer closed the control socket")
        proto.receive_data(data)
    return reply


def _drain(sock, proto: ClientProtocol) -> None:
    """Feed `obproto` whatever the socket still holds, without blocking (errors end it)."""
    while True:
        try:
            data, fds = _recv_with_fds(sock, socket.MSG_DONTWAIT)
            for fd in fds:
                os.close(fd)
            if not data:
                return
            proto.receive_data(data)
        except (OSError, ProtocolError, ObserverUnavailable):
            return


def _recv_with_fds(sock, flags: int = 0) -> tuple[bytes, list[int]]:
    data, ancdata, flags, _ = sock.recvmsg(RECV_BYTES_MAX, socket.CMSG_SPACE(FDS_MAX * 4),
                                           socket.MSG_CMSG_CLOEXEC | flags)
    fds: list[int] = []
    for level, kind, cdata in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.extend(array.array("i", cdata[: len(cdata) - len(cdata) % 4]))
    if flags & socket.MSG_CTRUNC:
        for fd in fds:
            os.close(fd)
        raise ObserverUnavailable("fds passed by the observer were truncated")
    return data, fds
