"""One contract, every backend: what a fiber sees must not depend on io_uring vs epoll vs kqueue.

Real sockets (TCP loopback, unix stream and seqpacket, socketpair), real pipes and eventfds.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import struct
import threading
import time

import pytest

from observer import loom

pytestmark = pytest.mark.timeout(30)

MESSAGES = [b"x", b"hello", bytes(range(256)) * 4, b"\0" * 65536]


def echo_server(sock, buf_bytes=65536):
    buf = bytearray(buf_bytes)
    view = memoryview(buf)
    while True:
        n = loom.recv_into(sock, buf)
        if n == 0:
            return
        loom.sendall(sock, view[:n])


def recv_exactly(sock, n):
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = loom.recv_into(sock, view[got:])
        assert k > 0, f"EOF after {got} of {n} bytes"
        got += k
    return bytes(buf)


def run_echo(loop, client, server):
    def main():
        peer = loop.spawn(echo_server, server)
        for message in MESSAGES:
            loom.sendall(client, message)
            assert recv_exactly(client, len(message)) == message
        client.shutdown(socket.SHUT_WR)
        peer.join()
        return "ok"

    assert loop.run(main) == "ok"


def test_echo_socketpair(loop, closing):
    run_echo(loop, *closing(*socket.socketpair()))


def test_echo_tcp_loopback(loop, tcp_pair):
    run_echo(loop, *tcp_pair)


def test_echo_unix_stream_with_accept_and_connect(loop, closing, sockdir):
    path = os.path.join(sockdir, "s")
    listener = closing(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
    listener.bind(path)
    listener.listen(8)
    client = closing(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))

    def main():
        acceptor = loop.spawn(loom.accept, listener)
        loom.connect(client, path)
        conn, _ = acceptor.join()
        closing(conn)
        assert conn.getblocking() is False
        peer = loop.spawn(echo_server, conn)
        for message in MESSAGES:
            loom.sendall(client, message)
            assert recv_exactly(client, len(message)) == message
        client.shutdown(socket.SHUT_WR)
        peer.join()

    loop.run(main)


def test_tcp_connect_and_accept(loop, closing):
    listener = closing(socket.create_server(("127.0.0.1", 0)))
    client = closing(socket.socket())

    def main():
        acceptor = loop.spawn(loom.accept, listener)
        loom.connect(client, listener.getsockname())
        conn, addr = acceptor.join()
        closing(conn)
        assert addr[0] == "127.0.0.1"
        loom.sendall(conn, b"ping")
        assert recv_exactly(client, 4) == b"ping"

    loop.run(main)


def test_connect_refused_is_a_clear_error(loop, closing):
    probe = closing(socket.create_server(("127.0.0.1", 0)))
    port = probe.getsockname()[1]
    probe.close()                                   # nobody listens there now
    client = closing(socket.socket())

    def main():
        with pytest.raises(ConnectionRefusedError):
            loom.connect(client, ("127.0.0.1", port))

    loop.run(main)


def test_seqpacket_keeps_message_boundaries(loop, closing):
    a, b = closing(*socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET))

    def main():
        for i in range(5):
            loom.sendall(a, b"m%d" % i * (i + 1))
        buf = bytearray(100)
        got = []
        for _ in range(5):
            n = loom.recv_into(b, buf)
            got.append(bytes(buf[:n]))
        assert got == [b"m%d" % i * (i + 1) for i in range(5)]

    loop.run(main)


def test_pipe_read_write_and_eof(loop, closing):
    r, w = closing(*os.pipe())

    def writer():
        for i in range(100):
            loom.write(w, b"%04d" % i)
            if i % 10 == 0:
                loom.sleep(0.001)
        os.close(w)
        return "done"

    def main():
        fiber = loop.spawn(writer)
        data = bytearray()
        buf = bytearray(7)
        while True:
            n = loom.read(r, buf)
            if n == 0:
                break
            data += buf[:n]
        assert fiber.join() == "done"
        assert data == b"".join(b"%04d" % i for i in range(100))

    loop.run(main)


@pytest.mark.skipif(not hasattr(os, "eventfd"), reason="this OS has no eventfd")
def test_eventfd_wakes_reader_from_another_thread(loop, closing):
    efd = closing(os.eventfd(0))

    def poster():
        time.sleep(0.02)
        os.eventfd_write(efd, 5)

    def main():
        thread = threading.Thread(target=poster)
        thread.start()
        buf = bytearray(8)
        assert loom.read(efd, buf) == 8
        thread.join()
        return struct.unpack("<Q", buf)[0]

    assert loop.run(main) == 5


def test_thousand_concurrent_fibers(loop, closing):
    pairs = [closing(*socket.socketpair()) for _ in range(500)]
    results = []

    def pinger(sock, i):
        for k in range(3):
            msg = struct.pack("<II", i, k)
            loom.sendall(sock, msg)
            assert recv_exactly(sock, 8) == msg
        results.append(i)
        sock.shutdown(socket.SHUT_WR)

    def main():
        fibers = []
        for i, (a, b) in enumerate(pairs):
            fibers.append(loop.spawn(echo_server, b, 64))
            fibers.append(loop.spawn(pinger, a, i))
        assert len(fibers) == 1000
        assert loop.stats().fibers_live >= 1000
        for fiber in fibers:
            fiber.join()

    loop.run(main)
    assert sorted(results) == list(range(500))


def test_16mib_partial_reads_and_writes(loop, closing):
    size = 16 * 1024 * 1024
    payload = os.urandom(1024) * (size // 1024)
    a, b = closing(*socket.socketpair())

    def reader():
        buf = bytearray(size)
        view = memoryview(buf)
        got = 0
        reads = 0
        while got < size:
            n = loom.recv_into(b, view[got:], min(size - got, 100_000))
            assert n > 0
            got += n
            reads += 1
        return hashlib.sha256(buf).hexdigest(), reads

    def main():
        fiber = loop.spawn(reader)
        loom.sendall(a, payload)
        digest, reads = fiber.join()
        assert digest == hashlib.sha256(payload).hexdigest()
        assert reads > 1                                    # it really was partial

    loop.run(main)


def test_eof_reads_zero(loop, closing):
    a, b = closing(*socket.socketpair())

    def main():
        a.close()
        assert loom.recv_into(b, bytearray(10)) == 0
        assert loom.recv(b, 10) == b""

    loop.run(main)


@pytest.mark.parametrize("pair_kind", ["socketpair", "tcp"])
def test_data_then_eof_in_one_edge_reads_data_then_zero(loop, closing, tcp_pair, pair_kind):
    """Data and the peer's FIN arrive before the loop polls: a short read must not be taken
    for "drained" and leave the EOF unseen (that wait would never end)."""
    a, b = closing(*socket.socketpair()) if pair_kind == "socketpair" else tcp_pair

    def reader():
        buf = bytearray(1024)
        with loom.timeout(10.0):
            first = loom.recv_into(b, buf)
            second = loom.recv_into(b, buf)
        return first, second

    def main():
        fiber = loop.spawn(reader)
        loom.sleep(0.005)                   # the reader is parked on an empty socket
        a.sendall(b"half")                  # plain calls: both land before the next poll
        a.shutdown(socket.SHUT_WR)
        return fiber.join()

    assert loop.run(main) == (4, 0)


def test_peer_reset_raises_connection_reset(loop, tcp_pair):
    client, server = tcp_pair

    def main():
        reader = loop.spawn(loom.recv_into, client, bytearray(10))
        loom.sleep(0.01)                               # the reader is parked now
        server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        server.close()                                 # RST
        with pytest.raises(ConnectionResetError):
            reader.join()

    loop.run(main)


def test_closed_socket_is_a_clear_error(loop, closing):
    a, b = closing(*socket.socketpair())
    b.close()

    def main():
        with pytest.raises(OSError) as info:
            loom.recv_into(b, bytearray(4))
        assert info.value.errno == errno.EBADF

    loop.run(main)


def test_close_wakes_a_waiting_reader_with_closed_error(loop, closing):
    a, b = closing(*socket.socketpair())

    def main():
        reader = loop.spawn(loom.recv_into, b, bytearray(4))
        loom.sleep(0.005)
        loom.close(b)
        with pytest.raises(loom.ClosedError):
            reader.join()

    loop.run(main)


def test_two_readers_on_one_fd_is_an_error(loop, closing):
    a, b = closing(*socket.socketpair())

    def main():
        first = loop.spawn(loom.recv_into, b, bytearray(4))
        loom.sleep(0.005)
        with pytest.raises(loom.LoomError, match="already has a waiting reader"):
            loom.recv_into(b, bytearray(4))
        loom.sendall(a, b"abcd")
        assert first.join() == 4

    loop.run(main)


def test_thread_offload(loop):
    def blocking(x):
        time.sleep(0.01)
        return x * 2

    def failing():
        raise KeyError("from a thread")

    def main():
        fibers = [loop.spawn(loom.run_in_thread, blocking, i) for i in range(10)]
        assert [f.join() for f in fibers] == [i * 2 for i in range(10)]
        with pytest.raises(KeyError, match="from a thread"):
            loom.run_in_thread(failing)

    loop.run(main)


def test_overflow_saturation_loses_nothing(loop, closing):
    """More operations in flight than the io_uring submission queue holds: all complete."""
    count = 600
    pairs = [closing(*socket.socketpair()) for _ in range(count)]
    got = {}

    def reader(i, sock):
        buf = bytearray(8)
        n = loom.recv_into(sock, buf)
        got[i] = struct.unpack("<Q", buf[:n])[0]

    def main():
        fibers = [loop.spawn(reader, i, b) for i, (_, b) in enumerate(pairs)]
        loom.sleep(0.01)                            # every reader is parked in the backend
        for i, (a, _) in enumerate(pairs):
            a.send(struct.pack("<Q", i * 7))
        for fiber in fibers:
            fiber.join()

    loop.run(main)
    assert got == {i: i * 7 for i in range(count)}
    stats = loop.stats()
    assert stats.ops_completed >= count
    if loop.backend_name == "io_uring":
        assert stats.overflow_high_water > 0, "the test did not overflow the submission queue"


def test_callback_layer_read_write_call_later(loop, closing):
    a, b = closing(*socket.socketpair())
    events = []
    buf = bytearray(16)

    def on_read(result):
        events.append(("read", result, bytes(buf[:result])))

    def on_write(result):
        events.append(("write", result))
        loop.read(b, buf, on_read)

    loop.write(a, b"payload", on_write)
    loop.call_later(0.01, events.append, ("later",))
    loop.run()
    assert events[0] == ("write", 7)
    assert ("read", 7, b"payload") in events
    assert ("later",) in events


def test_stats_count_operations(loop, closing):
    a, b = closing(*socket.socketpair())

    def main():
        reader = loop.spawn(loom.recv_into, b, bytearray(4))
        loom.sleep(0.005)
        loom.sendall(a, b"abcd")
        reader.join()

    loop.run(main)
    stats = loop.stats()
    assert stats.backend == loop.backend_name
    assert stats.switches > 0
    assert stats.ops_submitted >= 1
    assert stats.ops_completed >= 1
    assert stats.timers_armed >= 1
    assert stats.fibers_spawned == 2
    assert stats.fibers_live == 0


# -- cancellation: a cancelled operation never completes ----------------------------------------

def test_a_read_cancelled_by_an_earlier_callback_never_runs(loop, closing):
    """Two reads ready in one pass; the first one's callback cancels the second. The second's
    callback must not run, and run() must return (the pending count stays exact: a read
    performed after its cancel took it to -1, and run() then polled forever)."""
    a1, b1 = closing(*socket.socketpair())
    a2, b2 = closing(*socket.socketpair())
    a1.send(b"one")
    a2.send(b"two")
    events = []
    ops = {}

    def first(result):
        events.append(("first", result))
        loop.cancel(ops["second"])

    ops["first"] = loop.read(b1, bytearray(8), first)
    ops["second"] = loop.read(b2, bytearray(8), lambda result: events.append(("second", result)))
    loop.run()
    assert events == [("first", 3)]

    def read_again():
        return loom.recv(b2, 8)                     # nothing the cancelled read saw is lost

    assert loop.run(read_again) == b"two"


def _ready_target(kind, closing):
    """An fd on which an operation of `kind` can complete at once, the Op fields it needs, and
    what a second op of that kind on that fd must get if the first was cancelled (None: no
    check), as a function of its result."""
    from observer.loom import _common as c

    if kind in (c.RECV, c.SEND, c.POLL_IN, c.POLL_OUT):
        a, b = closing(*socket.socketpair())
        a.send(b"data")
        fields = {c.RECV: {"buf": bytearray(8)}, c.SEND: {"data": b"x"}}.get(kind, {})
        return b, fields, (lambda n, op: op.buf[:n] == b"data") if kind == c.RECV else None
    if kind in (c.READ, c.WRITE):
        r, w = closing(*os.pipe())
        os.write(w, b"data")
        if kind == c.READ:
            return r, {"buf": bytearray(8)}, lambda n, op: op.buf[:n] == b"data"
        return w, {"data": b"x"}, None
    listener = closing(socket.create_server(("127.0.0.1", 0)))
    client = closing(socket.socket())
    if kind == c.ACCEPT:
        client.connect(listener.getsockname())      # waits in the backlog, accepted by nobody

        def accepted_it(result, op):
            conn, _ = closing(result[0]), result[1]
            return conn.getpeername() == client.getsockname()

        return listener, {}, accepted_it
    assert kind == c.CONNECT
    client.setblocking(False)
    assert client.connect_ex(listener.getsockname()) in (0, errno.EINPROGRESS)
    return client, {}, None


def _registered(backend, obj):
    """An fd as the loop's fd table hands it to a backend: non-blocking, registered."""
    from observer.loom import _common as c

    state = c.FdState(obj, c.fd_of(obj))
    c.make_nonblocking(state)
    backend.register(state)
    return state


def _op(kind, state, callback, fields):
    from observer.loom import _common as c

    op = c.Op(callback)
    op.kind = kind
    op.state = state
    op.buf = fields.get("buf")
    op.data = fields.get("data")
    return op


def _poll_until(backend, condition, polls_max=200):
    """Poll (10 ms at most each) until `condition()`; fails after `polls_max` polls."""
    for _ in range(polls_max):
        if condition():
            return
        backend.poll(0.01)
    assert condition(), f"not reached after {polls_max} polls"


@pytest.mark.parametrize("when", ["before_the_poll", "from_an_earlier_callback"])
@pytest.mark.parametrize("kind_name", ["recv", "send", "accept", "connect", "read", "write",
                                       "wait_readable", "wait_writable"])
def test_a_cancelled_operation_never_completes(backend, closing, kind_name, when):
    """Whatever the kind and whenever the cancel comes (before the backend has seen the op, or
    from another completion's callback in the poll that would complete it), its callback is
    never called afterwards, `pending` returns to 0, and what it would have taken (bytes, a
    connection) goes to the next op of its kind on that fd. Driven through the Backend
    protocol alone: register, submit, cancel, poll, pending."""
    from observer.loom import _common as c
    from observer.loom.backend import Backend, make_backend

    kind = next(k for k, name in c.KIND_NAMES.items() if name == kind_name)
    obj, fields, expected = _ready_target(kind, closing)
    impl = make_backend(backend)
    assert isinstance(impl, Backend)
    try:
        state = _registered(impl, obj)
        after_cancel, cancelled, witnessed = [], [], []
        op = _op(kind, state, lambda result: after_cancel.append(result) if cancelled else None,
                 fields)
        witness_a, witness_b = closing(*socket.socketpair())
        witness_a.send(b"w")

        def cancel():
            cancelled.append(True)
            impl.cancel(op)

        def on_witness(result):
            witnessed.append(result)
            if when == "from_an_earlier_callback":
                cancel()

        witness = _op(c.RECV, _registered(impl, witness_b), on_witness, {"buf": bytearray(4)})
        if when == "from_an_earlier_callback":
            impl.submit(witness)                    # first in line
            impl.submit(op)
        else:
            impl.submit(op)
            cancel()
            impl.submit(witness)
        _poll_until(impl, lambda: witnessed and impl.pending == 0)
        assert witnessed == [1]
        assert after_cancel == []
        assert not op.in_flight
        if expected is not None:
            results = []
            second = _op(kind, state, results.append, fields)
            impl.submit(second)
            _poll_until(impl, lambda: results)
            assert expected(results[0], second) is True
        assert impl.pending == 0
    finally:
        impl.close()


@pytest.mark.skipif("io_uring" not in loom.available_backends(),
                    reason="only io_uring has a submission overflow queue")
def test_io_uring_an_op_refused_by_a_full_overflow_queue_is_not_pending(closing):
    """Past overflow_max the submit is refused with LoomError; the refused op must not stay
    counted as pending (a loop would then wait forever for a completion that cannot come)."""
    from observer.loom import _common as c
    from observer.loom.backend_uring import UringBackend

    backend = UringBackend(sq_entries=2, cq_entries=2, overflow_max=1)
    try:
        ops = []
        for _ in range(backend.inflight_max + 2):    # in flight, one waiting, one refused
            a, b = closing(*socket.socketpair())
            state = c.FdState(b, b.fileno())
            backend.register(state)
            op = c.Op(lambda result: None)
            op.kind, op.state, op.buf = c.POLL_IN, state, None
            ops.append(op)
        for op in ops[:-1]:
            backend.submit(op)
        with pytest.raises(loom.LoomError, match="overflow_max=1"):
            backend.submit(ops[-1])
        assert backend.pending == len(ops) - 1
        assert ops[-1].in_flight is False
    finally:
        backend.close()
