"""Real peers for the net tests and the benchmark: a self-signed certificate, a `websockets`
server and a TLS `http.server`, each in its own thread on 127.0.0.1 with a free port."""

from __future__ import annotations

import asyncio
import datetime
import gzip
import ipaddress
import ssl
import http.server
import threading
from pathlib import Path


def run(fn, *args, backend=None):
    """`fn(*args)` as the main fiber of a fresh loom loop (`backend`: forced, or the default)."""
    from observer import loom

    loop = loom.Loop(backend)
    try:
        return loop.run(fn, *args)
    finally:
        loop.close()


def make_cert(directory: Path, common_name: str = "localhost") -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1; returns (cert_file, key_file)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName(common_name), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file = directory / "cert.pem"
    key_file = directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


def server_ssl_context(certs) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certs["cert"], certs["key"])
    return ctx


# -- a websockets server in a thread --------------------------------------------------------------

async def _ws_handler(conn):
    """Behaviour by path: what each interop test needs the independent peer to do."""
    from websockets.exceptions import ConnectionClosed

    path = conn.request.path
    try:
        if path == "/echo":
            async for message in conn:
                await conn.send(message)
        elif path == "/fragments":
            await conn.send(["frag", "mented ", "täxt"])
            await conn.send([b"\x00\x01", b"", b"\x02" * 70000])
            await conn.wait_closed()
        elif path == "/big":
            size = 8 * 1024 * 1024
            await conn.send(bytes(range(256)) * (size // 256))
            await conn.send("x" * size)
            await conn.wait_closed()
        elif path == "/ping":
            waiter = await conn.ping(b"are you there")
            await asyncio.wait_for(waiter, 10)
            await conn.send("pong-received")
            await conn.wait_closed()
        elif path == "/close":
            await conn.send("closing")
            await conn.close(4001, "bye now")
        elif path == "/abort":
            await conn.send("aborting")
            await asyncio.sleep(0.05)
            conn.transport.abort()
        elif path == "/silent":
            await conn.wait_closed()
        elif path == "/stream":
            for i in range(1000):
                await conn.send('{"stream":"btcusdt@depth","data":{"u":%d}}' % i)
            await conn.wait_closed()
    except ConnectionClosed:
        pass


class WsServer:
    def __init__(self, ssl_ctx, compression):
        self.ssl_ctx = ssl_ctx
        self.compression = compression
        self.port = 0
        self._ready = threading.Event()
        self._stop = None
        self._loop = None
        self._thread = threading.Thread(target=self._run, name="ws-server", daemon=True)

    def start(self):
        self._thread.start()
        assert self._ready.wait(20), "websockets server did not start"
        return self

    def _run(self):
        asyncio.run(self._main())

    async def _main(self):
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(_ws_handler, "127.0.0.1", 0, ssl=self.ssl_ctx,
                         compression=self.compression, max_size=None, ping_interval=None,
                         close_timeout=2) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    def stop(self):
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)
        assert not self._thread.is_alive(), "websockets server did not stop"


# -- an HTTPS server in a thread ----------------------------------------------------------------

SNAPSHOT = b'{"lastUpdateId":1027024,"bids":[["4.00000000","431.00000000"]],"asks":[]}' * 50


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        self.server.requests.append((self.path, dict(self.headers), id(self.connection)))
        path = self.path.split("?")[0]
        if path == "/json":
            self._reply(200, SNAPSHOT, [("Content-Type", "application/json")])
        elif path == "/gzip":
            assert "gzip" in self.headers.get("Accept-Encoding", "")
            self._reply(200, gzip.compress(SNAPSHOT), [("Content-Encoding", "gzip")])
        elif path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(SNAPSHOT), 1000):
                part = SNAPSHOT[i:i + 1000]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        elif path == "/429":
            self._reply(429, b'{"code":-1003}', [("Retry-After", "17")])
        elif path == "/418":
            self._reply(418, b'{"code":-1003}', [("Retry-After", "120")])
        elif path == "/close":
            self._reply(200, b"bye", [("Connection", "close")])
            self.close_connection = True
        elif path == "/stall":
            self.server.stall.wait(30)
            self._reply(200, b"late")
        elif path == "/big":
            self._reply(200, b"b" * 3_000_000)
        else:
            self._reply(404, b"not found")

    def _reply(self, status, body, headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class HttpsServer(http.server.ThreadingHTTPServer):
    """`start()` serves in a thread; `stop()` ends it and every handler thread. A handler waits
    on its keep-alive connection until the client closes it, so stop() shuts each accepted
    connection down itself: no thread outlives the test, whatever its client did (a leftover
    one would wake later, in another test)."""

    daemon_threads = True
    HANDLERS_MAX = 256            # connections a test may open; past it a test is wrong
    STOP_WAIT_S = 20.0            # a deadline for threads to end, never a timing assertion

    def __init__(self, ssl_ctx):
        super().__init__(("127.0.0.1", 0), _Handler)
        if ssl_ctx is not None:
            self.socket = ssl_ctx.wrap_socket(self.socket, server_side=True)
        self.requests = []
        self.stall = threading.Event()
        self.port = self.server_address[1]
        self._handlers: list[tuple[threading.Thread, object]] = []
        self._handlers_lock = threading.Lock()
        self._serve_thread: threading.Thread | None = None
        self._stopping = False

    def start(self) -> "HttpsServer":
        self._serve_thread = threading.Thread(target=self.serve_forever, name="https-server",
                                              kwargs={"poll_interval": 0.05}, daemon=True)
        self._serve_thread.start()
        return self

    def process_request(self, request, client_address):
        thread = threading.Thread(target=self.process_request_thread, name="https-handler",
                                  args=(request, client_address), daemon=True)
        with self._handlers_lock:
            assert len(self._handlers) < self.HANDLERS_MAX, "HttpsServer.HANDLERS_MAX"
            self._handlers.append((thread, request))
        thread.start()

    def handle_error(self, request, client_address):
        if not self._stopping:         # a connection cut by stop() is not worth a traceback
            super().handle_error(request, client_address)

    def stop(self) -> None:
        import socket

        self._stopping = True
        self.stall.set()
        if self._serve_thread is not None:
            self.shutdown()
            self._serve_thread.join(self.STOP_WAIT_S)
            assert not self._serve_thread.is_alive(), "https server did not stop"
        with self._handlers_lock:
            handlers = list(self._handlers)
        for _, request in handlers:
            try:
                # the plain socket's shutdown: the handler thread still owns the TLS object
                socket.socket.shutdown(request, socket.SHUT_RDWR)
            except OSError:
                pass                   # already closed by its handler
        for thread, _ in handlers:
            thread.join(self.STOP_WAIT_S)
            assert not thread.is_alive(), "https handler thread did not end"
        self.server_close()


# -- a raw WebSocket peer that misbehaves on purpose ------------------------------------------

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def accept_value(request: bytes) -> bytes:
    import base64
    import hashlib

    key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key:"))
    return base64.b64encode(hashlib.sha1(key + WS_GUID).digest())


def upgrade_reply(request: bytes, accept: bytes | None = None) -> bytes:
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + (accept or accept_value(request)) + b"\r\n\r\n")


def read_request(conn) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def read_client_frames(conn, count: int, timeout_s: float = 10.0) -> list[tuple[int, bytes]]:
    """Read `count` masked client frames: [(opcode, unmasked payload)]; fewer at EOF."""
    import struct

    conn.settimeout(timeout_s)
    buf = b""
    frames = []
    while len(frames) < count:
        while True:
            if len(buf) >= 2:
                n = buf[1] & 0x7F
                pos = 2
                if n == 126 and len(buf) >= 4:
                    n, pos = struct.unpack_from("!H", buf, 2)[0], 4
                elif n == 127 and len(buf) >= 10:
                    n, pos = struct.unpack_from("!Q", buf, 2)[0], 10
                if n < 126 or pos > 2:
                    assert buf[1] & 0x80, "client frame not masked"
                    if len(buf) >= pos + 4 + n:
                        key = buf[pos:pos + 4]
                        payload = bytes(b ^ key[i % 4] for i, b in enumerate(buf[pos + 4:pos + 4 + n]))
                        frames.append((buf[0] & 0x0F, payload))
                        buf = buf[pos + 4 + n:]
                        break
            chunk = conn.recv(65536)
            if not chunk:
                return frames
            buf += chunk
    return frames


class RawServer:
    """Plain TCP on 127.0.0.1: each accepted connection runs `behaviour(conn)` in a thread;
    whatever the behaviour returns (or raises) is kept in `results` for the test to check."""

    def __init__(self, behaviour):
        import socket

        self.behaviour = behaviour
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self.results: list = []
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._serve_one, daemon=True)
        self._thread.start()

    def _serve_one(self):
        try:
            conn, _ = self.listener.accept()
        except OSError:
            self.done.set()
            return
        with conn:
            try:
                self.results.append(self.behaviour(conn))
            except Exception as exc:  # reported to the test, not lost in a thread
                self.results.append(exc)
        self.done.set()

    def close(self):
        import socket

        try:  # wakes an accept() still waiting (close() alone does not on Linux)
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        self._thread.join(20)
        assert not self._thread.is_alive(), "raw server thread did not end"
