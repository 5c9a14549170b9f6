"""TCP streams on loom: connect by host name, read into caller buffers, send in order.

`connect(host, port, timeout_s=...)` resolves the name in a worker thread
(`loom.run_in_thread(socket.getaddrinfo, ...)`, since getaddrinfo blocks and has no
non-blocking form), then tries each address in turn until one accepts, all within one deadline.
Each failure has its own exception: `DnsError` (the name does not resolve), `ConnectError`
(refused, unreachable; the message names every address tried), `NetTimeout` (the deadline).
A literal IP address skips the thread.

`TcpStream` is the shape the TLS layer and the protocols read through: `recv_into(view) -> int`
(0 at EOF), `sendall(data)`, `close()`. Every read has a deadline (`read_timeout_s`): a peer
that goes silent ends in `NetTimeout`, never a hang. A reset or broken pipe becomes
`ConnectionClosed(1006)`, the code RFC 6455 gives a connection that ended without a close.
Sends have a deadline too (`SEND_TIMEOUT_S`), for a peer that stops reading.

`before_read`, when set, is called before every read from the socket (a read may wait there):
a caller that batches work per read, like the shard's one eventfd write after the messages of
a read, finishes it first, so nothing it holds back waits on the network.

Sends are serialised: loom lets one fiber read while another writes, but two fibers writing the
same socket could interleave partial sends. A fiber that finds a send in progress queues its
bytes, and the sending fiber sends them next, in order (at most `SEND_QUEUE_BYTES_MAX`).
"""

from __future__ import annotations

import array
import fcntl
import socket
import termios

from observer import loom
from observer.net.errors import ConnectError, ConnectionClosed, DnsError, NetTimeout

CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0
SEND_TIMEOUT_S = 30.0        # a peer that stops reading must not park a sender forever
SEND_QUEUE_BYTES_MAX = 64 * 1024 * 1024


def connect(host: str, port: int, *, timeout_s: float = CONNECT_TIMEOUT_S,
            read_timeout_s: float | None = READ_TIMEOUT_S) -> "TcpStream":
    """A connected TcpStream with TCP_NODELAY set; raises DnsError, ConnectError, NetTimeout."""
    assert timeout_s > 0
    try:
        with loom.timeout(timeout_s):
            addresses = _resolve(host, port)
            sock = _connect_any(host, port, addresses)
    except TimeoutError:
        raise NetTimeout(f"connect to {host}:{port} timed out after {timeout_s} s") from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return TcpStream(sock, read_timeout_s=read_timeout_s, peer=f"{host}:{port}")


def _resolve(host: str, port: int) -> list[tuple]:
    try:  # a literal address resolves without a thread or a DNS query
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                  flags=socket.AI_NUMERICHOST)
    except socket.gaierror:
        pass
    except UnicodeError as exc:  # the name cannot even be encoded for a query
        raise DnsError(f"cannot resolve {host!r}: {exc}") from None
    try:
        infos = loom.run_in_thread(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise DnsError(f"cannot resolve {host!r}: {exc.strerror or exc}") from None
    except UnicodeError as exc:
        raise DnsError(f"cannot resolve {host!r}: {exc}") from None
    if not infos:
        raise DnsError(f"cannot resolve {host!r}: no addresses")
    return infos


def _connect_any(host: str, port: int, addresses: list[tuple]) -> socket.socket:
    errors = []
    for family, type_, proto, _, address in addresses:
        sock = socket.socket(family, type_, proto)
        try:
            loom.connect(sock, address)
            return sock
        except TimeoutError:  # loom's deadline (an OSError subclass): not this address's fault
            _close_socket(sock)
            raise
        except OSError as exc:
            _close_socket(sock)
            errors.append(f"{address[0]}: {exc.strerror or exc}")
        except BaseException:
            _close_socket(sock)
            raise
    raise ConnectError(f"cannot connect to {host}:{port}: " + "; ".join(errors))


class TcpStream:
    """A connected socket; see the module essay for deadlines and send ordering."""

    def __init__(self, sock: socket.socket, *, read_timeout_s: float | None = READ_TIMEOUT_S,
                 peer: str = "") -> None:
        self.sock = sock
        self.read_timeout_s = read_timeout_s
        self.peer = peer
        self.closed = False
        self._sending = False
        self._send_queue: list[bytes] = []
        self._send_queue_bytes = 0
        self._inq = array.array("i", [0])   # FIONREAD result, reused: sampling allocates nothing
        self.before_read = None             # called before each read (module essay)

    def fileno(self) -> int:
        return self.sock.fileno()

    def unread_bytes(self) -> int:
        """Bytes the kernel holds for this socket that nobody has read yet (FIONREAD, i.e.
        SIOCINQ on TCP); 0 once closed. One ioctl: for a periodic overload gauge (C11), not for
        every message."""
        fd = self.sock.fileno()
        if self.closed or fd < 0:
            return 0
        try:
            fcntl.ioctl(fd, termios.FIONREAD, self._inq)
        except OSError:
            return 0
        return self._inq[0]

    def recv_into(self, view: memoryview, timeout_s: float | None = None) -> int:
        """Read at most len(view) bytes; 0 means the peer closed. Raises NetTimeout."""
        if self.closed:
            raise ConnectionClosed(1006, "stream is closed")
        if self.before_read is not None:
            self.before_read()
        limit_s = timeout_s if timeout_s is not None else self.read_timeout_s
        try:
            if limit_s is None:
                return loom.recv_into(self.sock, view)
            with loom.timeout(limit_s):
                return loom.recv_into(self.sock, view)
        except TimeoutError:
            raise NetTimeout(f"no data from {self.peer} for {limit_s} s") from None
        except OSError as exc:
            raise ConnectionClosed(1006, f"connection to {self.peer} lost: {exc}") from None

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        """Send everything, after whatever another fiber is sending now."""
        if self.closed:
            raise ConnectionClosed(1006, "stream is closed")
        if self._sending:
            if self._send_queue_bytes + len(data) > SEND_QUEUE_BYTES_MAX:
                raise ConnectionClosed(1006, f"send queue over SEND_QUEUE_BYTES_MAX to {self.peer}")
            self._send_queue.append(bytes(data))
            self._send_queue_bytes += len(data)
            return
        self._sending = True
        try:
            self._send_now(data)
            while self._send_queue:
                queued = self._send_queue.pop(0)
                self._send_queue_bytes -= len(queued)
                self._send_now(queued)
        finally:
            self._sending = False

    def _send_now(self, data: bytes | bytearray | memoryview) -> None:
        try:
            with loom.timeout(SEND_TIMEOUT_S):
                loom.sendall(self.sock, data)
        except TimeoutError:
            raise NetTimeout(f"{self.peer} took no data for {SEND_TIMEOUT_S} s") from None
        except OSError as exc:
            raise ConnectionClosed(1006, f"connection to {self.peer} lost: {exc}") from None

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            _close_socket(self.sock)


def _close_socket(sock: socket.socket) -> None:
    """Close through loom when in a fiber, so the loop forgets the fd before it is reused."""
    try:
        loom.close(sock)
    except loom.LoomError:  # not in a fiber (a finaliser, a test tearing down)
        sock.close()
