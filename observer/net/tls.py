"""TLS over loom: `ssl.SSLObject` with two `MemoryBIO`s, fed by a `TcpStream`.

Python's `ssl.SSLSocket` does its own blocking I/O, so on a fiber loop TLS is driven by hand:
ciphertext read from the socket goes into the incoming BIO, `SSLObject.read(n, view)` decrypts
straight into the caller's buffer (the WebSocket reader's receive window, so plaintext is
written once, where it is parsed), and whatever OpenSSL puts in the outgoing BIO is sent after
each call. `SSLWantReadError` means "feed me more ciphertext", never an error.

Verification is on by default: `make_context(ca_file=None)` trusts the system store and checks
the host name; `ca_file` adds a CA bundle (a testnet, a proxy, the local simulator); only
`verify=False` turns checking off, and it says so in its name. SNI is always sent for names.
A failed verification is a `TlsError` that names the host and OpenSSL's reason. Contexts are
cached per CA file (`shared_context`): building one loads the trust store, far too slow to do
on the loop for every reconnect.

The raw receive buffer is allocated once (`RAW_BYTES_MAX`); `recv_into` allocates nothing per
record beyond what the ssl module does inside. When neither BIO nor OpenSSL holds anything to
decrypt, `recv_into` reads the socket first instead of letting `read` raise SSLWantReadError:
at low rates that exception, about 2 µs, came once per message.
"""

from __future__ import annotations

import hashlib
import ssl

from observer import loom
from observer.net import tcp
from observer.net.errors import ConnectionClosed, NetTimeout, TlsError

RAW_BYTES_MAX = 64 * 1024
HANDSHAKE_TIMEOUT_S = 10.0


def make_context(*, ca_file: str | None = None, verify: bool = True) -> ssl.SSLContext:
    """A client context: TLS 1.2+, system trust store plus `ca_file`, host names checked."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_file is not None:
        try:
            ctx.load_verify_locations(cafile=str(ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise TlsError(f"cannot load CA file {ca_file}: {exc}") from None
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


_CONTEXTS: dict[tuple, ssl.SSLContext] = {}
CONTEXTS_MAX = 16  # distinct CA files in one process; more means contexts are made per call
CA_FILE_BYTES_MAX = 4 * 1024 * 1024  # digested for the cache key; a system bundle is ~200 KB


def shared_context(*, ca_file: str | None = None, verify: bool = True) -> ssl.SSLContext:
    """A cached client context. Loading the system trust store takes tens of milliseconds,
    so the first one is built in a worker thread (the loop keeps running) and then reused.
    The key includes a digest of the CA file (a few KB, read per connect, far cheaper than
    the handshake): a simulator restarted with a new certificate at the same path gets a new
    context, not a stale trust. (Size and mtime would miss a same-size rewrite in one tick.)"""
    key: tuple = (None, verify)
    if ca_file is not None:
        try:
            with open(ca_file, "rb") as f:
                digest = hashlib.sha256(f.read(CA_FILE_BYTES_MAX + 1)).digest()
        except OSError as exc:
            raise TlsError(f"cannot load CA file {ca_file}: {exc}") from None
        key = (str(ca_file), digest, verify)
    ctx = _CONTEXTS.get(key)
    if ctx is None:
        ctx = loom.run_in_thread(lambda: make_context(ca_file=ca_file, verify=verify))
        if len(_CONTEXTS) < CONTEXTS_MAX:
            _CONTEXTS[key] = ctx
    return ctx


def connect(host: str, port: int, *, ca_file: str | None = None,
            context: ssl.SSLContext | None = None, timeout_s: float = tcp.CONNECT_TIMEOUT_S,
            read_timeout_s: float | None = tcp.READ_TIMEOUT_S) -> "TlsStream":
    """TCP connect, then the TLS handshake, each within `timeout_s`."""
    ctx = context if context is not None else shared_context(ca_file=ca_file)
    stream = tcp.connect(host, port, timeout_s=timeout_s, read_timeout_s=read_timeout_s)
    try:
        tls = TlsStream(stream, ctx, host)
        tls.handshake(timeout_s)
        return tls
    except BaseException:
        stream.close()
        raise


class TlsStream:
    """The TcpStream shape (`recv_into`, `sendall`, `close`) with TLS in between."""

    def __init__(self, stream: tcp.TcpStream, context: ssl.SSLContext, host: str) -> None:
        self.stream = stream
        self.host = host
        self.peer = stream.peer
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        # server_hostname drives both SNI and the name check; an IP literal gets no SNI
        # (RFC 6066 forbids it) but is still checked against the certificate's IP SANs.
        self._obj = context.wrap_bio(self._incoming, self._outgoing, server_hostname=host)
        self._raw = bytearray(RAW_BYTES_MAX)
        self._raw_view = memoryview(self._raw)
        self._eof = False

    @property
    def closed(self) -> bool:
        return self.stream.closed

    @property
    def read_timeout_s(self) -> float | None:
        return self.stream.read_timeout_s

    @read_timeout_s.setter
    def read_timeout_s(self, value: float | None) -> None:
        self.stream.read_timeout_s = value

    @property
    def before_read(self):
        """The TCP stream's hook, called before each read of ciphertext (tcp.py)."""
        return self.stream.before_read

    @before_read.setter
    def before_read(self, hook) -> None:
        self.stream.before_read = hook

    def fileno(self) -> int:
        return self.stream.fileno()

    def unread_bytes(self) -> int:
        """The socket's unread bytes plus what TLS holds: ciphertext in the incoming BIO and
        plaintext OpenSSL decrypted but nobody has read (C11's gauge)."""
        if self.stream.closed:
            return 0
        return self.stream.unread_bytes() + self._incoming.pending + self._obj.pending()

    def handshake(self, timeout_s: float = HANDSHAKE_TIMEOUT_S) -> None:
        while True:
            try:
                self._obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                if not self._fill(timeout_s, during="handshake"):
                    raise TlsError(f"{self.peer} closed the connection during the TLS handshake")
            except ssl.SSLCertVerificationError as exc:
                raise TlsError(f"certificate verification failed for {self.host}: "
                               f"{exc.verify_message or exc.reason}") from None
            except ssl.SSLError as exc:
                raise TlsError(f"TLS handshake with {self.peer} failed: {exc}") from None
        self._flush()

    def recv_into(self, view: memoryview, timeout_s: float | None = None) -> int:
        """Decrypt into `view`; 0 at EOF (close_notify or the peer closing TCP)."""
        if not self._incoming.pending and not self._obj.pending() and not self._eof:
            if self._outgoing.pending:
                self._flush()
            self._fill(timeout_s, during="read")  # nothing to decrypt yet: no exception for it
        while True:
            try:
                return self._obj.read(len(view), view)
            except ssl.SSLWantReadError:
                if self._outgoing.pending:
                    self._flush()  # a TLS 1.3 key update or a ticket ack wants out
                if not self._fill(timeout_s, during="read"):
                    return 0
            except ssl.SSLZeroReturnError:
                return 0
            except ssl.SSLError as exc:
                if self._eof:
                    return 0  # TCP closed without close_notify; the protocol above judges it
                raise TlsError(f"TLS error from {self.peer}: {exc}") from None

    def _fill(self, timeout_s: float | None, during: str) -> bool:
        """Move one read of ciphertext into the incoming BIO; False at EOF."""
        if self._eof:
            return False
        try:
            n = self.stream.recv_into(self._raw_view, timeout_s)
        except NetTimeout as exc:
            raise NetTimeout(f"TLS {during}: {exc}") from None
        if n == 0:
            self._eof = True
            self._incoming.write_eof()
            return False
        self._incoming.write(self._raw_view[:n])
        return True

    def _flush(self) -> None:
        if self._outgoing.pending:
            self.stream.sendall(self._outgoing.read())

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while len(view):
            try:
                n = self._obj.write(view)
            except ssl.SSLWantReadError:  # renegotiation in progress: needs the peer's bytes
                self._flush()
                if not self._fill(None, during="write"):
                    raise ConnectionClosed(1006, f"{self.peer} closed during a TLS write")
                continue
            except ssl.SSLError as exc:
                raise TlsError(f"TLS write to {self.peer} failed: {exc}") from None
            view = view[n:]
            self._flush()

    def close(self) -> None:
        """Send close_notify if we can, then close TCP. Never raises."""
        if self.stream.closed:
            return
        try:
            self._obj.unwrap()
        except ssl.SSLError:
            pass
        try:
            self._flush()
        except Exception:
            pass
        self.stream.close()
