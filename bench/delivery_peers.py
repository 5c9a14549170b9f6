"""The contenders of bench/delivery.py: each carries the same top-of-book record one way.

Each has `prepare()` (before fork: shared resources), `reader_open()` / `receive(timeout_s)` /
`reader_close()` (in the forked reader), `writer_open()` / `send(i)` (in the writer; returns the
writer's clock when the record became visible, where that differs from the send stamp) and
`close()`. Not a benchmark by itself: `make bench` runs it as a script and it does nothing.
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import secrets
import select
import signal
import struct
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from obproto.segment import SegmentReader  # noqa: E402
from observer.shm import Segment  # noqa: E402
from obproto import layout  # noqa: E402
from obproto.layout import BookDesc  # noqa: E402

BODY = struct.Struct(layout.RECORD_BODY_FORMAT)
TOKEN = f"{os.getpid()}-{secrets.token_hex(3)}"
ALL_CPUS = os.sched_getaffinity(0)      # before anything pins this process
SATURATED = 2**64 - 2
HOSTILE_SPAM_WRITES = 10
HOSTILE_PAUSE_S = 100e-6


class TopBook:
    """The book the observer writer publishes: one level a side, export_top as in SEAMS.md."""

    price_exp, size_exp = -2, -8

    def __init__(self):
        self.update_id = 0
        self.exch_ts_ns = 0
        self.bid = (6_543_210, 100_000_000)
        self.ask = (6_543_211, 200_000_000)

    def export_top(self, bid_px, bid_sz, ask_px, ask_sz):
        bid_px[0], bid_sz[0] = self.bid
        ask_px[0], ask_sz[0] = self.ask
        return 1, 1


def record_fields(i: int, ts_ns: int) -> tuple:
    return (0, layout.KIND_UPDATE, layout.FLAG_PUBLISHED, -2, -8, i, i, ts_ns, ts_ns, ts_ns,
            6_543_210, 100_000_000, 6_543_211, 200_000_000)


def pin(cpu: int) -> None:
    if os.cpu_count() and os.cpu_count() >= 2:
        os.sched_setaffinity(0, {cpu})


class IoxRecord(ctypes.Structure):
    _fields_ = [("book_index", ctypes.c_uint32), ("kind", ctypes.c_uint8),
                ("flags", ctypes.c_uint8), ("price_exp", ctypes.c_int8),
                ("size_exp", ctypes.c_int8), ("book_seq", ctypes.c_uint64),
                ("update_id", ctypes.c_uint64), ("exch_ts_ns", ctypes.c_int64),
                ("recv_ts_ns", ctypes.c_int64), ("publish_ts_ns", ctypes.c_int64),
                ("bid_px", ctypes.c_int64), ("bid_sz", ctypes.c_int64),
                ("ask_px", ctypes.c_int64), ("ask_sz", ctypes.c_int64)]

# -- contenders: prepare (before fork), reader side (child), writer side (parent) ------------


class Raw:
    name = "raw eventfd+epoll"
    coalescing = True  # one shared value: a late reader sees only the newest message

    def prepare(self):
        self.efd = os.eventfd(0, os.EFD_NONBLOCK)
        self.shared = mmap.mmap(-1, 4096)  # MAP_SHARED anonymous: shared across fork
        self.words = memoryview(self.shared).cast("q")

    def reader_open(self):
        self.ep = select.epoll()
        self.ep.register(self.efd, select.EPOLLIN | select.EPOLLET)

    def receive(self, timeout_s):
        if not self.ep.poll(timeout_s):
            return None
        return self.words[1], self.words[0]

    def writer_open(self):
        pass

    def reader_close(self):
        pass

    def send(self, i):
        ts_ns = time.time_ns()
        self.words[1] = i
        self.words[0] = ts_ns
        os.eventfd_write(self.efd, 1)
        return ts_ns

    def close(self):
        self.words.release()
        self.shared.close()
        os.close(self.efd)


class RawSpin(Raw):
    name = "raw shm spin"

    def reader_open(self):
        self.seen = 0

    def receive(self, timeout_s):
        words, seen = self.words, self.seen
        deadline = time.monotonic() + timeout_s
        while True:
            for _ in range(256):
                if words[1] != seen:
                    i = words[1]
                    self.seen = i
                    return i, words[0]
            if time.monotonic() > deadline:
                return None

    def send(self, i):
        ts_ns = time.time_ns()
        self.words[0] = ts_ns
        self.words[1] = i  # after the timestamp: the reader polls this word
        return ts_ns


class Observer:
    """The shard's steps for one feed message: wake_ahead (before parsing), publish, flush.

    The send stamp is the book's exch_ts_ns, set before wake_ahead (publish_ts_ns, stamped
    inside publish, would leave the wake-ahead write out of the measurement).
    """
    name = "observer blocking"
    spin = False
    wake = "auto"  # the default: with one client, the shard writes its eventfd itself
    ahead = True

    def prepare(self):
        self.segment = Segment.create(f"obbench-{TOKEN}", [BookDesc("bench", "BTCUSD", "x", 0)],
                                      1, 8, 4096)
        self.segment.seal()
        self.fds = self.segment.client_fds()   # what the control server hands a client
        self.book = TopBook()

    def reader_open(self):
        self.reader = SegmentReader(self.fds[0], self.fds[1:])   # the wake fd, as a client
        self.follower = self.reader.follow()

    def receive(self, timeout_s):
        # One record per call (a consistent top of book: update.bid_px ... ask_sz), the wait
        # and the copy in one: spinning on the ring head, or in epoll.
        follower = self.follower
        update = follower.spin_next(timeout_s) if self.spin else follower.wait_next(timeout_s)
        return None if update is None else (update.update_id, update.exch_ts_ns)

    def reader_close(self):
        self.reader.close()

    def writer_open(self):
        self.writer = self.segment.writer(0, wake=self.wake)

    def send(self, i):
        book, writer = self.book, self.writer
        book.update_id = i
        book.exch_ts_ns = time.time_ns()  # the message's arrival: the send stamp
        if self.ahead:
            writer.wake_ahead()
        writer.publish(0, book)
        visible_ns = time.time_ns()
        writer.flush()
        return visible_ns

    def close(self):
        for fd in self.fds:
            os.close(fd)
        self.segment.close()


class ObserverUnderAttack(Observer):
    """`Observer`, with a hostile client of the same segment attacking its own wake fd in a
    loop for the whole pass (what tests/server/test_server_isolation.py checks for facts):
    read and saturating writes (EINVAL), O_NONBLOCK cleared, epoll_wait on it, its own eventfd
    added to it and written 10 times a round. Unpinned, so it may run on either CPU, and paced
    (HOSTILE_PAUSE_S between rounds, thousands of rounds a second): what the row measures is
    what the attacks do to the victim's wake-ups, not the CPU any busy process, client or not,
    can take from it on a 2-CPU machine."""
    name = "observer blocking+hostile"

    def prepare(self):
        super().prepare()
        hostile_fds = self.segment.client_fds()
        self.hostile_pid = os.fork()
        if self.hostile_pid == 0:
            _hostile_loop(hostile_fds[1:])     # never returns
        for fd in hostile_fds:
            os.close(fd)

    def close(self):
        os.kill(self.hostile_pid, signal.SIGKILL)
        os.waitpid(self.hostile_pid, 0)
        super().close()


def _hostile_loop(wake_fds: list[int]) -> None:
    try:
        os.sched_setaffinity(0, ALL_CPUS)
        own = os.eventfd(0, os.EFD_NONBLOCK)
        inners = [select.epoll.fromfd(os.dup(fd)) for fd in wake_fds]
        for fd, inner in zip(wake_fds, inners):
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
            inner.register(own, select.EPOLLIN)
        while True:
            for fd, inner in zip(wake_fds, inners):
                for attempt in (lambda: os.read(fd, 8), lambda: os.eventfd_write(fd, SATURATED)):
                    try:
                        attempt()
                    except OSError:
                        pass                   # EINVAL: a wake fd is neither read nor written
                inner.poll(0)
            for _ in range(HOSTILE_SPAM_WRITES):
                os.eventfd_write(own, 1)
            time.sleep(HOSTILE_PAUSE_S)
    finally:
        os._exit(1)


class ObserverSpin(Observer):
    name = "observer busy-poll"
    spin = True
    ahead = False  # wake_ahead = false: what a host whose clients busy-poll configures


class ObserverFlushOnly(Observer):
    name = "observer no wake-ahead"
    ahead = False  # the flush's write is the only wake-up


class ObserverUring(Observer):
    name = "observer io_uring wake"
    wake = "io_uring"  # the eventfd write done by an io_uring worker (observer/shm/wake.py)


class Zmq:
    name = "pyzmq ipc PUB/SUB"

    def prepare(self):
        self.path = os.path.join(tempfile.gettempdir(), f"obbench-{TOKEN}.ipc")

    def reader_open(self):
        import zmq

        self.ctx = zmq.Context()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(f"ipc://{self.path}")
        self.poller = zmq.Poller()
        self.poller.register(self.sub, zmq.POLLIN)

    def receive(self, timeout_s):
        if not self.poller.poll(timeout_s * 1000):
            return None
        fields = BODY.unpack(self.sub.recv())
        return fields[6], fields[9]

    def reader_close(self):
        self.sub.close(0)
        self.ctx.term()

    def writer_open(self):
        import zmq

        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.bind(f"ipc://{self.path}")
        time.sleep(0.3)  # PUB/SUB slow joiner: let the subscriber's connect land

    def send(self, i):
        self.pub.send(BODY.pack(*record_fields(i, time.time_ns())))

    def close(self):
        if hasattr(self, "pub"):
            self.pub.close(0)
            self.ctx.term()
            del self.pub, self.ctx
        if os.path.exists(self.path):
            os.unlink(self.path)


class Iox:
    name = "iceoryx2 blocking"
    spin = False

    def prepare(self):
        self.service = f"obbench/{TOKEN}/{self.spin}"

    def _open(self):
        import iceoryx2 as iox

        self.iox = iox
        iox.set_log_level_from_env_or(iox.LogLevel.Error)
        self.node = iox.NodeBuilder.new().create(iox.ServiceType.Ipc)
        name = iox.ServiceName.new(self.service)
        self.pubsub = (self.node.service_builder(name).publish_subscribe(IoxRecord)
                       .subscriber_max_buffer_size(64).open_or_create())
        self.event = self.node.service_builder(iox.ServiceName.new(self.service + "/ev")) \
            .event().open_or_create()

    def reader_open(self):
        self._open()
        self.sub = self.pubsub.subscriber_builder().create()
        self.listener = self.event.listener_builder().create()
        self.timeout = {}

    def receive(self, timeout_s):
        sample = self.sub.receive()
        if sample is None and not self.spin:
            duration = self.timeout.get(timeout_s) or self.iox.Duration.from_secs_f64(timeout_s)
            self.timeout[timeout_s] = duration
            self.listener.timed_wait(duration)
            sample = self.sub.receive()
        elif sample is None:
            deadline = time.monotonic() + timeout_s
            while sample is None and time.monotonic() < deadline:
                sample = self.sub.receive()
        if sample is None:
            return None
        rec = sample.payload().contents
        result = rec.update_id, rec.publish_ts_ns
        sample.delete()
        return result

    def reader_close(self):
        self.close()

    def writer_open(self):
        self._open()
        self.pub = self.pubsub.publisher_builder().create()
        self.notifier = self.event.notifier_builder().create()
        self.pub.update_connections()

    def send(self, i):
        sample = self.pub.loan_uninit()
        sample = sample.write_payload(IoxRecord(*record_fields(i, time.time_ns())))
        sample.send()
        visible_ns = time.time_ns()
        self.notifier.notify()
        return visible_ns

    def close(self):
        for name in ("notifier", "pub", "listener", "sub"):
            if hasattr(self, name):
                getattr(self, name).delete()
                delattr(self, name)
        for name in ("pubsub", "event", "node"):  # dropping the node releases its resources
            if hasattr(self, name):
                delattr(self, name)


class IoxSpin(Iox):
    name = "iceoryx2 busy-poll"
    spin = True
