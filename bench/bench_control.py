"""Control socket: request round trip and snapshot paths, side by side with a plain floor.

Contenders, one line each, in one run (ratios against the floor of the same run):
  floor: blocking msgpack echo    a separate process answering framed msgpack on a unix socket
                                  with plain blocking recv/send (no loop, no validation)
  observer/B: describe            obclient.request(Describe) against a real observer process on
                                  loom backend B (framing, decoding, name resolution, reply)
  observer/B: snapshot socket     SnapshotRequest depth 10 (catalog reads the segment)
  observer/B: pipelined describe  PIPELINED describes sent at once, then their replies read:
                                  time per request (the server batches the replies' sends)
  obclient: snapshot from shm     book.snapshot(10) on the mapped segment (no syscall)
Seeded (the synthetic feed's seed), warm-up first, perf_counter_ns, microseconds per call.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROUNDS = 2000
WARMUP = 200
PIPELINED = 64                       # requests sent before reading a reply
BACKENDS = ("io_uring", "epoll")     # loom backends the observer runs on, forced per row

ECHO_SERVER = r"""
import os, socket, struct, sys, msgpack
path = sys.argv[1]
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); srv.bind(path); srv.listen(1)
print("ready", flush=True)
conn, _ = srv.accept()
hdr = struct.Struct("<I")
buf = b""
while True:
    data = conn.recv(65536)
    if not data:
        break
    buf += data
    while len(buf) >= 4:
        (n,) = hdr.unpack_from(buf)
        if len(buf) < 4 + n:
            break
        msg = msgpack.unpackb(buf[4:4 + n]); buf = buf[4 + n:]
        out = msgpack.packb(["book", msg[1], [0, "synthetic", "BTCUSD", "BTCUSD", 0, -2, -4, 50]])
        conn.sendall(hdr.pack(len(out)) + out)
"""


def timed(fn, rounds=ROUNDS) -> list[float]:
    for _ in range(WARMUP):
        fn()
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1e3)
    return samples


def line(name: str, samples: list[float], floor_p50: float) -> None:
    samples.sort()
    p50 = statistics.median(samples)
    p99 = samples[int(len(samples) * 0.99)]
    print(f"{name:<38} p50 {p50:8.1f} us  p99 {p99:8.1f} us  x{p50 / floor_p50:5.2f} of floor")


def floor_samples(workdir: str) -> list[float]:
    from obclient.protocol import ClientProtocol
    from obproto import messages as m

    path = os.path.join(workdir, "echo.sock")
    proc = subprocess.Popen([sys.executable, "-c", ECHO_SERVER, path], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        proto = ClientProtocol("bench")

        def call():
            req_id, data = proto.request(m.Describe, "BTCUSD")
            sock.sendall(data)
            while proto.take_reply(req_id) is None:
                proto.receive_data(sock.recv(65536))

        samples = timed(call)
        sock.close()
        return samples
    finally:
        proc.kill()
        proc.wait()


def pipelined_samples(socket_path: str) -> list[float]:
    """Microseconds per request, PIPELINED describes at a time on a raw connection."""
    from obclient.protocol import ClientProtocol
    from obproto import messages as m

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(socket_path)
    proto = ClientProtocol("bench")
    req_id, data = proto.hello(want_fds=False)
    sock.sendall(data)
    while proto.take_reply(req_id) is None:
        proto.receive_data(sock.recv(65536))

    def burst():
        frames = [proto.request(m.Describe, "BTCUSD") for _ in range(PIPELINED)]
        sock.sendall(b"".join(data for _, data in frames))
        for req_id, _ in frames:
            while proto.take_reply(req_id) is None:
                proto.receive_data(sock.recv(65536))

    samples = [us / PIPELINED for us in timed(burst, ROUNDS // 10)]
    sock.close()
    return samples


def main() -> int:
    from obsim.observerproc import ObserverProcess
    from obproto import messages as m

    print(f"bench_control: {ROUNDS} rounds, load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="obs-bench-") as workdir:
        floor = floor_samples(workdir)
        floor_p50 = statistics.median(floor)
        rows = [("floor: blocking msgpack echo", floor)]
        for backend in BACKENDS:
            with ObserverProcess(rate=100, seed=7, extra_args=["--backend", backend]) as obs:
                client = obs.wait_ready()
                book = client.book("BTCUSD")
                rows.append((f"observer/{backend}: describe",
                             timed(lambda: client.request(m.Describe, "BTCUSD"))))
                rows.append((f"observer/{backend}: snapshot(10) socket",
                             timed(lambda: client.request(m.SnapshotRequest, "BTCUSD", 10))))
                rows.append((f"observer/{backend}: pipelined describe",
                             pipelined_samples(obs.socket_path)))
                if backend == BACKENDS[0]:
                    rows.append(("obclient: snapshot(10) from shm",
                                 timed(lambda: book.snapshot(10))))
                client.close()
    for name, samples in rows:
        line(name, samples, floor_p50)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
