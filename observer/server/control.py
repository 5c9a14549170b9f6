"""The control server: a unix socket on loom; admission at accept, one transport per client.

Why this shape. Everything a client can say is decided by the sans-IO `ServerConnection`
(protocol.py); who may connect is decided by `Admission` (admission.py); each admitted client's
bytes are moved by its `ClientTransport` (transport.py: a reader and a writer fiber). This
module binds the socket, accepts, admits or refuses, and fans pushed updates out. A client that
stops reading blocks only its own writer and, through back pressure, its own reader; the loop,
the shards and every other client go on.

Who may connect (C7): the socket file is created with mode 0660 (umask set around bind, then
chmod, so there is no moment where it is wider), and every accepted peer's SO_PEERCRED (pid,
uid, gid) goes through `Admission`: the allow-list (DENIED), then `clients_max`,
`clients_per_uid_max` and `clients_per_pid_max` (BUSY). A refused peer gets one `error` saying
which rule and value refused it, and is closed; out of fds, the reserve fd makes room to say
BUSY (admission.py). After hello a connection with no subscription that sends nothing for
`client_idle_s` gets IDLE and is closed (before hello, `hello_timeout_s`), so a silent peer
holds a slot only that long. Every close the server decides is preceded by an `error` saying
why; at shutdown that is SHUTTING_DOWN.

One codec (a msgpack packer and its buffer) serves every connection: encoding is synchronous
and copies out, and a packer per connection was most of a connection's memory.

fd passing: the reply to `hello` carries, as SCM_RIGHTS on its first byte (sendmsg), fds the
catalog made for this client alone: a read-only fd on the segment and one private wake fd per
shard (observer/shm/segment.py says why never the shard eventfds). The kernel gives the client
its own copies, so the server closes its copies once the frame is sent, or when the client goes
first (`Outbound.release`).

The socket path is ours only while we live: `bind_socket` refuses a path where a live server
answers, replaces a stale socket file (a killed observer's), and `ControlServer.close` unlinks
it.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import stat
import struct
import time

from observer import loom
from observer.config.settings import ClientLimits
from observer.config.kinds import UNIX_PATH_BYTES_MAX
from observer.telemetry.logs import log_event
from observer.server.admission import OUT_OF_FDS, Admission, ReserveFd
from observer.server.protocol import ServerConnection
from observer.server.transport import ClientTransport
from obproto import framing
from obproto import messages as m

log = logging.getLogger("observer.server")

SOCKET_MODE_DEFAULT = 0o660
HELLO_TIMEOUT_S = 10.0        # a connection must say hello within this, or it is closed
LISTEN_BACKLOG = 64
ACCEPT_RETRY_S = 0.1          # pause after an accept failed for want of memory
REFUSALS_LOGGED_MAX = 10      # log the first refusals of a kind, then one per thousand
SWEEPS_PER_LIMIT = 4          # a silent connection is closed within 1.25x its time limit
_PEERCRED = struct.Struct("3i")


class SocketInUse(RuntimeError):
    """Another live server answers on the socket path."""


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the peer, from SO_PEERCRED (set by the kernel at connect)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    return _PEERCRED.unpack(raw)


def bind_socket(path: str, mode: int = SOCKET_MODE_DEFAULT) -> socket.socket:
    """A listening unix socket at `path` with `mode`; replaces a stale socket file."""
    path_bytes = len(os.fsencode(path))
    if path_bytes > UNIX_PATH_BYTES_MAX:  # bind's own error has no errno: "[Errno None]"
        raise OSError(errno.ENAMETOOLONG, f"cannot bind control socket {path[:80]}...: path is "
                      f"{path_bytes} bytes, at most {UNIX_PATH_BYTES_MAX}")
    _remove_stale(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old_umask = os.umask(0o777 & ~mode)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise OSError(exc.errno, f"cannot bind control socket {path}: {reason}") from None
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
                 allow_uids=(), allow_gids=(), limits: ClientLimits = ClientLimits(),
                 queue_records_max: int | None = None,
                 hello_timeout_s: float = HELLO_TIMEOUT_S):
        self.loop = loop
        self.catalog = catalog
        self.path = path
        self.mode = mode
        self.admission = Admission(limits, allow_uids, allow_gids)
        self.limits = limits
        self.hello_timeout_s = hello_timeout_s
        self.queue_kw = {} if queue_records_max is None else {"queue_records_max": queue_records_max}
        self.codec = m.server_codec()
        self.clients: dict[int, ClientTransport] = {}
        self.accepted = 0
        self.denied = 0
        self.refused_busy = 0
        self.closed_idle = 0
        self._conn_id_last = 0
        self._sock: socket.socket | None = None
        self._reserve: ReserveFd | None = None
        self._accept_fiber = None
        self._sweep_fiber = None
        self.sweep_period_s = min(hello_timeout_s, limits.client_idle_s) / SWEEPS_PER_LIMIT

    def start(self) -> None:
        """Bind and start accepting (call before or inside loop.run)."""
        self._sock = bind_socket(self.path, self.mode)
        self._reserve = ReserveFd()
        self._accept_fiber = self.loop.spawn(self._accept_loop, name="control-accept")
        self._sweep_fiber = self.loop.spawn(self._sweep_loop, name="control-sweep")

    def close(self) -> None:
        """Stop accepting, tell every client SHUTTING_DOWN and close it, unlink the socket.
        Idempotent."""
        for fiber in (self._accept_fiber, self._sweep_fiber):
            if fiber is not None and not fiber.done:
                fiber.cancel()
        self._accept_fiber = self._sweep_fiber = None
        for client in list(self.clients.values()):
            client.say_goodbye(m.ErrorCode.SHUTTING_DOWN, "observer shutting down; reattach later")
            client.abort()
        if self._reserve is not None:
            self._reserve.release()
            self._reserve = None
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
                "refused_busy": self.refused_busy, "closed_idle": self.closed_idle}

    def forget_client(self, client: ClientTransport) -> None:
        """The transport closed: its slot is free (called once, from ClientTransport.abort)."""
        del self.clients[client.proto.conn_id]
        self.admission.remove(client.proto.peer)
        self.catalog.client_gone(client.proto.conn_id)   # its wake group has room again
        assert self.admission.clients == len(self.clients)

    def _sweep_loop(self) -> None:
        """Close the connections silent past their deadline (hello, idle): see transport.py."""
        while True:
            loom.sleep(self.sweep_period_s)
            now_s = time.monotonic()
            for client in list(self.clients.values()):
                deadline_s = client.deadline_s()
                if deadline_s is not None and now_s >= deadline_s:
                    client.silence()

    # -- accepting -----------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = loom.accept(self._sock)
            except OSError as exc:
                if exc.errno in OUT_OF_FDS:
                    self._refuse_out_of_fds(exc)
                    continue
                # ENOBUFS/ENOMEM: out of memory for now. Accepting stops only for a moment;
                # the listener and every served client stay.
                log_event(log, "accept_failed", level=logging.WARNING, error=str(exc),
                          retry_s=ACCEPT_RETRY_S)
                loom.sleep(ACCEPT_RETRY_S)
                continue
            self.accepted += 1
            try:
                self._admit(conn)
            except OSError as exc:
                log_event(log, "client_failed_at_accept", level=logging.WARNING, error=str(exc))
                conn.close()

    def _admit(self, conn: socket.socket) -> None:
        peer = peer_credentials(conn)
        refusal = self.admission.refusal(peer)
        if refusal is not None:
            self._refuse(conn, peer, *refusal)
            return
        self._conn_id_last += 1
        proto = ServerConnection(self.catalog, conn_id=self._conn_id_last, peer=peer,
                                 idle_s=self.limits.client_idle_s, codec=self.codec,
                                 **self.queue_kw)
        client = ClientTransport(self, conn, proto)
        self.clients[proto.conn_id] = client
        self.admission.add(peer)
        assert self.admission.clients == len(self.clients)
        log_event(log, "client_connected", conn=proto.conn_id, pid=peer[0], uid=peer[1],
                  clients=len(self.clients))
        client.start()

    def _refuse(self, conn, peer: tuple[int, int, int], code: int, text: str) -> None:
        """Tell the peer why in one `error` (req_id 0), then close: it never sees a reset."""
        if code == m.ErrorCode.DENIED:
            self.denied += 1
            count = self.denied
        else:
            self.refused_busy += 1
            count = self.refused_busy
        if count <= REFUSALS_LOGGED_MAX or count % 1000 == 0:
            log_event(log, "client_refused", level=logging.WARNING, pid=peer[0], uid=peer[1],
                      gid=peer[2], code=m.ErrorCode.NAMES[code], reason=text, refused=count)
        data = framing.encode_frame(self.codec.encode(m.Error(0, code, text)), m.REPLY_BYTES_MAX)
        try:
            conn.send(data, socket.MSG_DONTWAIT)   # tiny, into an empty buffer: it fits
            # Closing with its hello unread would flag a reset on the peer, which its reads
            # report once our error is read; read the hello first, so they report a plain end.
            conn.recv(m.REQUEST_BYTES_MAX, socket.MSG_DONTWAIT)
        except OSError:
            pass
        conn.close()

    def _refuse_out_of_fds(self, exc: OSError) -> None:
        """No fd for a new peer: free the reserve, accept one, say BUSY, take the reserve back."""
        self._reserve.release()
        try:
            conn, _ = self._sock.accept()
        except OSError:
            conn = None                           # nobody waiting after all, or still no fd
        if conn is not None:
            try:
                peer = peer_credentials(conn)
            except OSError:
                peer = (0, 0, 0)
            self._refuse(conn, peer, m.ErrorCode.BUSY,
                         f"observer out of file descriptors ({errno.errorcode[exc.errno]}); "
                         "try again later")
        if not self._reserve.take() or conn is None:
            loom.sleep(ACCEPT_RETRY_S)            # let fds come back before accepting again
