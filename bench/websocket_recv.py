"""WebSocket receive throughput over TLS on loopback: loom's client against peers, one run.

A server process (this script with --serve) pre-encodes 1000 distinct depth-update text
frames of about 300 bytes (seeded) and sends them MESSAGES // 1000 times with one sendall each,
then a close frame, so the server is not the limit. Each contender connects (wss://, no
compression, the same self-signed certificate), counts messages until the close, and checks the
byte total. Printed: messages/s per contender and its ratio to the `websockets` client.

  loom/<be>   observer.net.websocket on loom, per backend (UTF-8 validated, zero-copy views)
  websockets websockets asyncio client, default asyncio loop (decodes every message to str)
  picows     picows asyncio client, default asyncio loop (hands out views; no UTF-8 check)

Two figures per contender: wall-clock messages/s, and client CPU time per message
(`time.process_time`), which is what a shard on a busy core pays and is not skewed by waits.

Options: --messages N, --deflate (permessage-deflate, each message compressed on its own;
loom and websockets only, as picows has no deflate), --profile (cProfile of the loom client, top functions),
--alloc (tracemalloc: memory growth per message once warm, on the loom client).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import random
import secrets
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import zlib
from functools import partial
from pathlib import Path

MESSAGES = 200_000
DISTINCT = 1000
SEED = 4
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# -- the server ------------------------------------------------------------------------------

def make_messages(seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for i in range(DISTINCT):
        bids = ",".join(f'["{42000 - rng.randint(0, 5000) / 100:.2f}","{rng.random() * 3:.8f}"]'
                        for _ in range(3))
        asks = ",".join(f'["{42000 + rng.randint(0, 5000) / 100:.2f}","{rng.random() * 3:.8f}"]'
                        for _ in range(2))
        text = ('{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":%d,"s":"BTCUSDT",'
                '"U":%d,"u":%d,"b":[%s],"a":[%s]}}' % (1700000000000 + i, 1000 + 3 * i,
                                                         1002 + 3 * i, bids, asks))
        out.append(text.encode())
    return out


def frame(payload: bytes, opcode: int = 1) -> bytes:
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big") + payload
    return bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big") + payload


def deflated_frame(payload: bytes) -> bytes:
    """permessage-deflate with no context takeover: each message compressed on its own, so
    the pre-encoded block can be sent again and again."""
    comp = zlib.compressobj(wbits=-15)
    data = (comp.compress(payload) + comp.flush(zlib.Z_SYNC_FLUSH))[:-4]
    head = frame(data)
    return bytes((head[0] | 0x40,)) + head[1:]


def serve(cert: str, key: str) -> None:
    payloads = make_messages(SEED)
    blobs = {False: b"".join(frame(p) for p in payloads),
             True: b"".join(deflated_frame(p) for p in payloads)}
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    print(listener.getsockname()[1], flush=True)
    while True:
        raw, _ = listener.accept()
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            with ctx.wrap_socket(raw, server_side=True) as conn:
                serve_one(conn, blobs)
        except (OSError, ssl.SSLError):
            pass


def serve_one(conn, blobs: dict[bool, bytes]) -> None:
    """One client: the path says how many messages (GET /stream?n=200000); messages are
    compressed when the client offers permessage-deflate."""
    request = b""
    while b"\r\n\r\n" not in request:
        chunk = conn.recv(4096)
        if not chunk:
            return
        request += chunk
    repeats = int(request.split(b" ", 2)[1].split(b"n=")[1]) // DISTINCT
    key = next(line.split(b":", 1)[1].strip() for line in request.split(b"\r\n")
               if line.lower().startswith(b"sec-websocket-key:"))
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    deflate = b"permessage-deflate" in request.lower()
    extension = (b"Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n"
                 if deflate else b"")
    conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n"
                 + extension + b"\r\n")
    blob = blobs[deflate]
    for _ in range(repeats):
        conn.sendall(blob)
    conn.sendall(frame(b"\x03\xe8", opcode=8))
    conn.settimeout(10)
    conn.recv(4096)  # the client's close frame; then the server closes TCP (RFC 6455 7.1.1)


# -- the contenders -----------------------------------------------------------------------------

def run_loom(url: str, ca_file: str, expect: int, profile: bool = False,
             alloc: bool = False, compression: bool = False,
             backend: str | None = None) -> tuple[int, int, float]:
    from observer import loom
    from observer.net import websocket
    from observer.net.errors import ConnectionClosed

    def main():
        ws = websocket.connect(url, ca_file=ca_file, compression=compression)
        warm = min(expect // 4, 20_000)
        recv = ws.recv
        total = len(recv().data)  # the clock starts at the first message
        t0 = time.perf_counter()
        c0 = time.process_time()
        count = 1
        while count < expect:
            msg = recv()
            count += 1
            total += len(msg.data)
            if alloc and count == warm:
                alloc_mark(count)
        elapsed = time.perf_counter() - t0
        cpu_s = time.process_time() - c0
        if alloc:
            alloc_report(count)
        try:
            recv()
        except ConnectionClosed:
            pass
        ws.close()
        return count, total, elapsed, cpu_s

    # Profiling and tracemalloc slow the fiber past the watchdog's bound; its stack reports
    # would then be the only allocations measured, so it is off for those two modes.
    loop = loom.Loop(backend, watchdog_s=None) if (profile or alloc) else loom.Loop(backend)
    try:
        if profile:
            import cProfile
            import pstats
            prof = cProfile.Profile()
            result = prof.runcall(loop.run, main)
            pstats.Stats(prof).sort_stats("tottime").print_stats(14)
            return result
        return loop.run(main)
    finally:
        loop.close()


_alloc_state: dict = {}


def alloc_mark(count: int) -> None:
    import gc
    import tracemalloc
    gc.collect()
    _alloc_state["count"] = count
    _alloc_state["current"] = tracemalloc.get_traced_memory()[0]
    _alloc_state["snapshot"] = tracemalloc.take_snapshot()
    tracemalloc.reset_peak()


def alloc_report(count: int) -> None:
    import tracemalloc
    current, peak = tracemalloc.get_traced_memory()
    n = count - _alloc_state["count"]
    print(f"websocket_recv alloc: after warm-up, {n} messages: traced memory "
          f"{current - _alloc_state['current']:+d} B ({(current - _alloc_state['current']) / n:+.3f}"
          f" B/msg), peak above warm "
          f"{peak - _alloc_state['current']} B")
    stats = tracemalloc.take_snapshot().compare_to(_alloc_state["snapshot"], "lineno")
    net = sum(st.size_diff for st in stats if "observer/net/" in st.traceback[0].filename)
    print(f"websocket_recv alloc: growth allocated in observer/net: {net:+d} B")
    for stat in [st for st in stats if st.size_diff > 0][:4]:
        print(f"  grew: {stat}")


def run_websockets(url: str, ca_file: str, expect: int,
                   compression: bool = False) -> tuple[int, int, float]:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    async def main():
        ctx = ssl.create_default_context(cafile=ca_file)
        async with connect(url, ssl=ctx, compression="deflate" if compression else None,
                           max_size=None) as ws:
            total = len(await ws.recv(decode=False))
            t0 = time.perf_counter()
            c0 = time.process_time()
            count = 1
            while count < expect:
                msg = await ws.recv(decode=False)  # bytes: counted like the others
                count += 1
                total += len(msg)
            elapsed, cpu_s = time.perf_counter() - t0, time.process_time() - c0
            try:
                await ws.recv()
            except ConnectionClosed:
                pass
            return count, total, elapsed, cpu_s

    return asyncio.run(main())


def run_picows(url: str, ca_file: str, expect: int) -> tuple[int, int, float]:
    import picows

    class Listener(picows.WSListener):
        def __init__(self):
            self.count = self.total = 0
            self.t0 = self.c0 = 0.0
            self.done = asyncio.get_running_loop().create_future()

        def on_ws_frame(self, transport, frame):
            if frame.msg_type == picows.WSMsgType.TEXT:
                self.count += 1
                self.total += len(frame.get_payload_as_memoryview())
                if self.count == 1:
                    self.t0 = time.perf_counter()
                    self.c0 = time.process_time()
                elif self.count == expect:
                    self.done.set_result((time.perf_counter(), time.process_time()))
            elif frame.msg_type == picows.WSMsgType.CLOSE:
                transport.send_close(picows.WSCloseCode.OK)
                transport.disconnect()

    async def main():
        ctx = ssl.create_default_context(cafile=ca_file)
        transport, listener = await picows.ws_connect(Listener, url, ssl_context=ctx)
        end, cpu_end = await listener.done
        await transport.wait_disconnected()
        return listener.count, listener.total, end - listener.t0, cpu_end - listener.c0

    return asyncio.run(main())


# -- the driver ----------------------------------------------------------------------------------

def make_cert(directory: Path) -> tuple[str, str]:
    import datetime
    import ipaddress
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=MESSAGES)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--alloc", action="store_true")
    parser.add_argument("--deflate", action="store_true",
                        help="permessage-deflate on (loom and websockets only)")
    parser.add_argument("--serve", nargs=2, metavar=("CERT", "KEY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    messages = args.messages - args.messages % DISTINCT
    if args.serve:
        serve(args.serve[0], args.serve[1])
        return
    directory = Path(tempfile.mkdtemp(prefix=f"obbench-{os.getpid()}-{secrets.token_hex(4)}-"))
    server = None
    try:
        cert, key = make_cert(directory)
        server = subprocess.Popen([sys.executable, __file__, "--serve", cert, key],
                                  stdout=subprocess.PIPE, text=True)
        port = int(server.stdout.readline())
        url = f"wss://127.0.0.1:{port}/stream?n={messages}"
        expect_bytes = sum(len(m) for m in make_messages(SEED)) * (messages // DISTINCT)
        if args.profile or args.alloc:
            if args.alloc:
                import tracemalloc
                tracemalloc.start()
            run_loom(url, cert, messages, profile=args.profile, alloc=args.alloc)
            return
        warm = max(DISTINCT, messages // 10 - messages // 10 % DISTINCT)
        run_loom(f"wss://127.0.0.1:{port}/stream?n={warm}", cert, warm)  # imports, TLS context
        from observer import loom
        contenders = [(f"loom/{name}", partial(run_loom, backend=name))
                      for name in loom.available_backends()]
        contenders += [("websockets", run_websockets), ("picows", run_picows)]
        if args.deflate:  # picows has no permessage-deflate
            contenders = [("loom+deflate", partial(run_loom, compression=True)),
                          ("websockets+deflate", partial(run_websockets, compression=True))]
        results = {}
        for name, fn in contenders:
            count, total, elapsed, cpu_s = fn(url, cert, messages)
            assert count == messages, f"{name} received {count} of {messages}"
            assert total == expect_bytes, f"{name} received {total} bytes, not {expect_bytes}"
            results[name] = (count / elapsed, cpu_s * 1e6 / count)
        base_rate, base_cpu_us = results["websockets+deflate" if args.deflate else "websockets"]
        for name, (rate, cpu_us) in results.items():
            print(f"websocket_recv {messages} x ~300 B over TLS: {name:<18} {rate:>10,.0f} msg/s "
                  f"{rate / base_rate:6.2f}x websockets | {cpu_us:6.2f} us CPU/msg "
                  f"{base_cpu_us / cpu_us:5.2f}x websockets")
    finally:
        if server is not None:
            server.kill()
            server.wait()
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
