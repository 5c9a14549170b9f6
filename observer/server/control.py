"""The control server: a unix socket on loom, one reader and one writer fiber per client.

Why this shape. Everything a client can say is decided by the sans-IO `ServerConnection`
(protocol.py); this module only moves bytes. Each client gets a reader fiber (recv into its own
preallocated buffer, feed the machine) and a writer fiber (send replies, then batches of pushed
updates), so a client that stops reading blocks only its own writer: its update queue fills and
drops (counted), its replies pile up to the outbound limit and it is closed, and the loop, the
shards and every other client go on.

Who may connect (C7): the socket file is created with mode 0660 (umask set around bind, then
chmod, so there is no moment where it is wider), and every accepted peer's SO_PEERCRED (pid, uid,
gid) is checked against the allow-list: our own uid, plus configured uids and gids. A refused
peer gets one DENIED error and is closed. Past `clients_max` a new client gets BUSY and is
closed, so fds stay bounded, and a connection that has not said hello within `hello_timeout_s`
is closed, so idle peers cannot hold every slot.

fd passing: the reply to `hello` carries, as SCM_RIGHTS on its first byte (sendmsg), fds the
catalog made for this client alone: a read-only fd on the segment and one private wake fd per
shard (observer/shm/segment.py says why never the shard eventfds). The kernel gives the client
its own copies, so the server closes its copies once the frame is sent, or when the client goes
first (`Outbound.release`).

The socket path is ours only while we live: `ControlServer.bind` refuses a path where a live
server answers, replaces a stale socket file (a killed observer's), and `close` unlinks it.
"""

from __future__ import annotations

import logging
import os
import socket
import stat
import struct
import time

from observer import loom
from observer.logs import log_event
from observer.server.protocol import ServerConnection
from proto import messages as m
from proto import framing

log = logging.getLogger("observer.server")

CLIENTS_MAX = 256             # each: 2 fibers, 1 fd, 64 KiB receive buffer, bounded queues
RECV_BYTES_MAX = 64 * 1024
SOCKET_MODE_DEFAULT = 0o660
CLOSE_FLUSH_S = 1.0           # how long a closing client's last replies may take to send
HELLO_TIMEOUT_S = 10.0        # a connection must say hello within this, or it is closed
LISTEN_BACKLOG = 64
FDS_PER_MESSAGE_MAX = 253     # Linux SCM_MAX_FD
ACCEPT_RETRY_S = 0.1          # pause after a failed accept (out of fds)
DENIED_LOGGED_MAX = 10        # log the first denials, then one per thousand (no log flood)
_PEERCRED = struct.Struct("3i")


class SocketInUse(RuntimeError):
    """Another live server answers on the socket path."""


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the peer, from SO_PEERCRED (set by the kernel at connect)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    return _PEERCRED.unpack(raw)


def bind_socket(path: str, mode: int = SOCKET_MODE_DEFAULT) -> socket.socket:
    """A listening unix socket at `path` with `mode`; replaces a stale socket file."""
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old_umask = os.umask(0o777 & ~mode)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot bind control socket {path}: {exc.strerror}") from None
    except BaseException:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    os.chmod(path, mode)
    sock.listen(LISTEN_BACKLOG)
    return sock


def _remove_stale(path: str) -> None:
    """Unlink `path` if it is a socket nobody serves; refuse if a live server answers."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise SocketInUse(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)          # left by a killed observer: nobody is listening
        return
    finally:
        probe.close()
    raise SocketInUse(f"another observer is serving {path}")


class ControlServer:
    """Serves `catalog` on a unix socket; see the module essay."""

    def __init__(self, loop, catalog, path: str, *, mode: int = SOCKET_MODE_DEFAULT,
                 allow_uids=(), allow_gids=(), clients_max: int = CLIENTS_MAX,
                 queue_records_max: int | None = None,
                 hello_timeout_s: float = HELLO_TIMEOUT_S):
        self.loop = loop
        self.catalog = catalog
        self.path = path
        self.mode = mode
        self.allow_uids = frozenset((os.getuid(), *allow_uids))
        self.allow_gids = frozenset(allow_gids)
        self.clients_max = clients_max
        self.hello_timeout_s = hello_timeout_s
        self.queue_kw = {} if queue_records_max is None else {"queue_records_max": queue_records_max}
        self.clients: dict[int, _Client] = {}
        self.accepted = 0
        self.denied = 0
        self.refused_busy = 0
        self._conn_id_last = 0
        self._sock: socket.socket | None = None
        self._accept_fiber = None

    def start(self) -> None:
        """Bind and start accepting (call before or inside loop.run)."""
        self._sock = bind_socket(self.path, self.mode)
        self._accept_fiber = self.loop.spawn(self._accept_loop, name="control-accept")

    def close(self) -> None:
        """Stop accepting, close every client, unlink the socket. Idempotent."""
        if self._accept_fiber is not None and not self._accept_fiber.done:
            self._accept_fiber.cancel()
        self._accept_fiber = None
        for client in list(self.clients.values()):
            client.abort()
        if self._sock is not None:
            self.loop.forget(self._sock)
            self._sock.close()
            self._sock = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def fanout(self, book_index: int, record: tuple) -> None:
        """Queue one update record for every client subscribed to `book_index`."""
        for client in self.clients.values():
            if book_index in client.proto.subscribed:
                client.proto.push_update(record)
                client.wake()

    def has_subscribers(self) -> bool:
        return any(client.proto.subscribed for client in self.clients.values())

    def client_stats(self) -> list[dict]:
        return [c.proto.stats() for c in self.clients.values()]

    def stats(self) -> dict:
        return {"clients": len(self.clients), "accepted": self.accepted, "denied": self.denied,
                "refused_busy": self.refused_busy}

    # -- accepting -----------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = loom.accept(self._sock)
            except OSError as exc:
                # EMFILE/ENFILE/ENOBUFS: out of resources for now. Accepting stops only for a
                # moment; the listener and every served client stay.
                log.warning("control accept failed: %s; retrying in %s s", exc, ACCEPT_RETRY_S)
                loom.sleep(ACCEPT_RETRY_S)
                continue
            self.accepted += 1
            try:
                self._admit(conn)
            except OSError as exc:
                log.warning("control client failed at accept: %s", exc)
                conn.close()

    def _admit(self, conn: socket.socket) -> None:
        peer = peer_credentials(conn)
        self._conn_id_last += 1
        proto = ServerConnection(self.catalog, conn_id=self._conn_id_last, peer=peer,
                                 **self.queue_kw)
        if not self._allowed(peer):
            self.denied += 1
            if self.denied <= DENIED_LOGGED_MAX or self.denied % 1000 == 0:
                log.warning("control client denied: pid=%d uid=%d gid=%d (denied so far: %d)",
                            *peer, self.denied)
            self._refuse(conn, proto, m.ErrorCode.DENIED, "peer credentials not allowed")
            return
        if len(self.clients) >= self.clients_max:
            self.refused_busy += 1
            self._refuse(conn, proto, m.ErrorCode.BUSY, f"clients_max={self.clients_max} reached")
            return
        client = _Client(self, conn, proto)
        self.clients[proto.conn_id] = client
        log_event(log, "client_connected", conn=proto.conn_id, pid=peer[0], uid=peer[1],
                  clients=len(self.clients))
        client.start()

    def _allowed(self, peer: tuple[int, int, int]) -> bool:
        _, uid, gid = peer
        return uid in self.allow_uids or gid in self.allow_gids

    def _refuse(self, conn, proto: ServerConnection, code: int, text: str) -> None:
        proto.reply(m.Error(0, code, text))
        data = proto.pop_outbound().data
        try:
            conn.send(data)          # non-blocking, tiny, into an empty buffer: best effort
        except OSError:
            pass
        conn.close()


class _Client:
    """One connected client: its socket, protocol machine, and two fibers."""

    def __init__(self, server: ControlServer, conn: socket.socket, proto: ServerConnection):
        self.server = server
        self.conn = conn
        self.proto = proto
        self.recv_buf = bytearray(RECV_BYTES_MAX)
        self.recv_view = memoryview(self.recv_buf)
        self.wakeup = loom.Event()
        self.reader = None
        self.writer = None
        self.closed = False

    def start(self) -> None:
        self.conn.setblocking(False)
        name = f"control-{self.proto.conn_id}"
        self.reader = self.server.loop.spawn(self._read_loop, name=name + "-read")
        self.writer = self.server.loop.spawn(self._write_loop, name=name + "-write")

    def wake(self) -> None:
        self.wakeup.post()

    def _read_loop(self) -> None:
        hello_deadline_s = time.monotonic() + self.server.hello_timeout_s
        try:
            while not self.proto.closing:
                if self.proto.version:
                    n = loom.recv_into(self.conn, self.recv_buf)
                else:                 # a peer that never says hello must not hold a slot
                    with loom.timeout(max(0.0, hello_deadline_s - time.monotonic())):
                        n = loom.recv_into(self.conn, self.recv_buf)
                self.proto.receive_data(self.recv_view[:n])
                self.wakeup.post()
        except TimeoutError:
            self.proto.reply(m.Error(0, m.ErrorCode.NOT_READY,
                                     f"no hello within {self.server.hello_timeout_s} s; closing"))
            self.proto.close("no hello in time")
        except OSError as exc:
            self.proto.close(f"recv failed: {exc}")
        self.wakeup.post()
        self._finish_after_flush()

    def _write_loop(self) -> None:
        proto = self.proto
        try:
            while True:
                while proto.outbound:
                    out = proto.pop_outbound()
                    try:
                        self._send(out.data, out.fds)
                    finally:
                        out.release()
                if proto.closing:
                    return
                batch = proto.take_updates()
                if batch is not None:
                    loom.sendall(self.conn, batch)
                    continue
                self.wakeup.clear()
                if not proto.has_output() and not proto.closing:
                    self.wakeup.wait()
        except OSError as exc:
            proto.close(f"send failed: {exc}")
            self.abort()

    def _send(self, data: bytes, fds: tuple) -> None:
        if not fds:
            loom.sendall(self.conn, data)
            return
        assert len(fds) <= FDS_PER_MESSAGE_MAX
        while True:
            try:
                sent = socket.send_fds(self.conn, [data], list(fds))
                break
            except BlockingIOError:
                loom.wait_writable(self.conn)
        if sent < len(data):
            loom.sendall(self.conn, data[sent:])

    def _finish_after_flush(self) -> None:
        """Give the writer CLOSE_FLUSH_S to send the last replies, then close."""
        try:
            self.writer.join(CLOSE_FLUSH_S)
        except TimeoutError:
            pass                      # it never read: its last replies are lost with it
        except (OSError, loom.LoomError):
            pass                      # the writer failed; it already asked to close
        self.abort()

    def abort(self) -> None:
        if self.closed:
            return
        self.closed = True
        current = _current_fiber()
        for fiber in (self.reader, self.writer):
            if fiber is not None and fiber is not current and not fiber.done:
                fiber.cancel()
        self.server.clients.pop(self.proto.conn_id, None)
        self.proto.release_outbound()          # fds made for this client and never sent
        self.server.loop.forget(self.conn)
        self.conn.close()
        # once per client, with who it was and why it went
        log_event(log, "client_disconnected", conn=self.proto.conn_id,
                  client=self.proto.client_name or "-", pid=self.proto.peer[0],
                  reason=self.proto.close_reason or "closed by the observer",
                  clients=len(self.server.clients))


def _current_fiber():
    try:
        return loom.current_fiber()
    except loom.LoomError:
        return None                   # called from plain code (shutdown after the loop)
