"""Where a shard's CPU per Binance diff goes: each stage of the path alone, in this process.

The stream is bench/cpu_per_msg.py's, made here by obsim's own Binance venue (10 level
changes per event, 1000-level books, obsim's size texts, `--books` symbols interleaved as
obsim's 5 ms ticks send them). Each stage runs its real code over the whole stream, and its
CPU time per message (thread time, best of REPEATS) is printed:

  tls        decrypt obsim's TLS records (ssl.SSLObject over memory BIOs, as net/tls.py does,
             one read per record and the "want read" that ends each batch)
  websocket  FrameReader: plaintext -> messages
  parse      orjson.loads of each payload; where the adapter scans live diffs from their
             bytes (observer/feeds/_binance_c.c), scan_diff of each instead
  apply      Book.apply of each parsed diff, books live from obsim's REST snapshot; where
             the adapter scans, Book.apply_text_diff of each payload's level spans
  adapter    BinanceAdapter.on_message, minus parse and apply: sync rules and actions
  publish    ShardWriter.publish: the top 10 levels into the idle copy (client/obproto/_latch_c reads
             the book's lists), copy head, latch flip, ring record
  wake       eventfd writes per message (counted in the glue run) x one write's cost
  glue       Session.deliver (+ ExchangeFeed.sink), each obsim tick's messages one batch (one
             read), minus adapter, publish and wake
  total      tls + websocket + Session.deliver

and the memory blocks the whole deliver path keeps per message once warm (tracemalloc).

Not here: the loop (epoll, fiber switches, timers) and the kernel's receive path; the live
bench (cpu_per_msg.py) has those inside the shard's whole CPU time. `--pure` runs the
pure-Python reference paths (OBSERVER_PURE_PYTHON=1) for comparison.

Usage: python bench/cpu_stages.py [--books 2] [--messages 12000] [--pure]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

# OBSERVER_TREE: the checkout whose code is measured (cpu_instructions.py --baseline).
sys.path.insert(0, os.environ.get("OBSERVER_TREE")
                or os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
if "--pure" in sys.argv:
    os.environ["OBSERVER_PURE_PYTHON"] = "1"

import orjson  # noqa: E402

from observer.book import ASK, BID, BookUpdate  # noqa: E402
from observer.shard.exchangefeed import ExchangeFeed  # noqa: E402
from observer.feeds.actions import FetchSnapshot  # noqa: E402
from observer.feeds.binance import NS_PER_MS, BinanceAdapter  # noqa: E402
from observer.feeds.session import Session  # noqa: E402
from observer.net.wsframe import FrameReader  # noqa: E402
from observer.shm.segment import Segment  # noqa: E402
from obsim import cli as sim_cli  # noqa: E402
from obsim.binance import BinanceSpot  # noqa: E402
from obsim.tls import make_certificates, server_context  # noqa: E402
from obsim.observerproc import unique_name  # noqa: E402
from obproto.layout import BookDesc  # noqa: E402

SEED = 7
RATE_TOTAL = 12_000
TICK_S = 0.005               # obsim's default tick: one write of every frame due per tick
DEPTH_PUBLISHED = 10
REPEATS = 3
RING_RECORDS = 1 << 16
LAG_BOUND_MS = 1e12          # the stream was made before it is timed: its event times are old


def symbols(books_n: int) -> list[str]:
    named = ["BTCUSDT", "ETHUSDT"]
    return named[:books_n] + [f"X{i:03d}USDT" for i in range(books_n - len(named))]


class CaptureConn:
    """What obsim's Binance venue needs of a connection, keeping the frames it is sent."""

    def __init__(self) -> None:
        self.state = {"micros": False, "combined": True}
        self.frames: list[bytes] = []
        self.payloads: list[bytes] = []

    def send(self, frame: bytes, payload: bytes | None = None) -> None:
        self.frames.append(frame)
        self.payloads.append(payload)


class Stream:
    """obsim's Binance stream for `books_n` symbols: snapshots, then `messages` diffs."""

    def __init__(self, books_n: int, messages: int) -> None:
        opts = sim_cli.parser().parse_args(["--exchanges", "binance", "--depth", "1000",
                                            "--seed", str(SEED), "--changes-per-event", "10",
                                            "--rate", str(RATE_TOTAL / books_n)])
        self.symbols = symbols(books_n)
        venue = BinanceSpot(opts, self.symbols, None)
        conn = CaptureConn()
        for symbol, market in venue.markets.items():
            market.state["subs"][conn] = [f"{symbol.lower()}@depth@100ms"]
        self.snapshots = {s: venue.snapshot_body(m, 1000) for s, m in venue.markets.items()}
        self.ticks: list[int] = []      # messages per obsim tick (one TLS write each)
        now_s = 0.0
        while len(conn.payloads) < messages:
            before = len(conn.payloads)
            venue.tick(now_s, TICK_S)
            self.ticks.append(len(conn.payloads) - before)
            now_s += TICK_S
        self.frames = conn.frames
        self.payloads = conn.payloads
        self.parsed = [orjson.loads(p) for p in self.payloads]

    def tick_bytes(self) -> list[bytes]:
        out, pos = [], 0
        for n in self.ticks:
            out.append(b"".join(self.frames[pos:pos + n]))
            pos += n
        return out


def live_adapter(stream: Stream) -> BinanceAdapter:
    adapter = BinanceAdapter(stream.symbols, depth=DEPTH_PUBLISHED)
    pending = adapter.on_open(0, 1)
    while pending:
        action = pending.pop(0)
        if type(action) is FetchSnapshot:
            pending += adapter.on_snapshot(action.symbol, 200, {}, stream.snapshots[action.symbol], 2)
    assert all(sync.live for sync in adapter.syncs.values()), "bench: a book did not go live"
    return adapter


# `--marks` (bench/cpu_instructions.py): two runs per stage, the second (warm) between two
# os.getppid() calls, which callgrind is told to dump its counters before: the instructions
# of that run are then exact, in a file of their own.
MARKS = "--marks" in sys.argv
RUNS_EACH = 2 if MARKS else REPEATS


def best_of(run, setup=None) -> int:
    """Best thread CPU ns of RUNS_EACH runs of `run(state)`, with `state = setup()` untimed."""
    best = None
    for k in range(RUNS_EACH):
        state = setup() if setup else None
        marked = MARKS and k == RUNS_EACH - 1
        if marked:
            os.getppid()
        start = time.thread_time_ns()
        run(state)
        elapsed = time.thread_time_ns() - start
        if marked:
            os.getppid()
        best = elapsed if best is None else min(best, elapsed)
    return best


def tls_pair_maker(workdir: Path):
    """A function making a connected (client, its incoming BIO, server, its outgoing BIO)
    in memory, with obsim's kind of certificate."""
    import ssl

    ca_path, cert_path, key_path = make_certificates(workdir)
    client_ctx = ssl.create_default_context(cafile=str(ca_path))
    server_ctx = server_context(cert_path, key_path)

    def pair():
        c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
        client = client_ctx.wrap_bio(c_in, c_out, server_hostname="127.0.0.1")
        server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
        for _ in range(10):
            for side in (client, server):
                try:
                    side.do_handshake()
                except ssl.SSLWantReadError:
                    pass
            s_in.write(c_out.read())
            c_in.write(s_out.read())
        return client, c_in, server, s_out

    return pair


def stage_tls(stream: Stream, workdir: Path) -> int:
    import ssl

    pair = tls_pair_maker(workdir)
    buf = memoryview(bytearray(1 << 16))

    def setup():
        client, c_in, server, s_out = pair()    # each pair has its own keys
        chunks = []
        for chunk in stream.tick_bytes():
            server.write(chunk)
            chunks.append(s_out.read())
        return client, c_in, chunks

    def run(state):
        client, c_in, chunks = state
        for chunk in chunks:
            c_in.write(chunk)
            while True:
                try:
                    client.read(len(buf), buf)
                except ssl.SSLWantReadError:
                    break

    return best_of(run, setup)


def stage_websocket(stream: Stream) -> int:
    blobs = stream.tick_bytes()

    def run(reader):
        for blob in blobs:
            pos = 0
            while pos < len(blob):
                window = reader.recv_window()
                n = min(len(window), len(blob) - pos, 16384)   # one TLS record at most
                window[:n] = blob[pos:pos + n]
                reader.received(n)
                pos += n
                while reader.next_event() is not None:
                    pass

    return best_of(run, FrameReader)


def scanning(stream: Stream) -> bool:
    """Whether the adapter reads live diffs from their bytes (observer/feeds/_binance_c.c)."""
    return getattr(live_adapter(stream), "scan", None) is not None


def stage_parse(stream: Stream) -> int:
    """orjson.loads of each payload, or, where the adapter scans, scan_diff of each."""
    payloads = stream.payloads
    if scanning(stream):
        from observer.feeds.binance import SCAN_LEVELS_MAX, scan_diff

        def run(_):
            for payload in payloads:
                scan_diff(payload, SCAN_LEVELS_MAX)
    else:
        def run(_):
            loads = orjson.loads
            for payload in payloads:
                loads(payload)

    return best_of(run)


def updates(stream: Stream) -> list[tuple[str, BookUpdate]]:
    out = []
    for msg in stream.parsed:
        event = msg["data"]
        out.append((event["s"], BookUpdate(False, event["b"], event["a"], event["u"],
                                           event["E"] * NS_PER_MS)))
    return out


def stage_apply(stream: Stream) -> int:
    """Book.apply of each parsed diff, or, where the adapter scans, apply_text_diff of each
    payload's level spans."""
    if scanning(stream):
        from observer.feeds.binance import SCAN_LEVELS_MAX, scan_diff
        scanned = []
        for payload in stream.payloads:
            symbol, exch_ms, _, last_id, b0, b1, a0, a1 = scan_diff(payload, SCAN_LEVELS_MAX)
            scanned.append((symbol, payload, b0, b1, a0, a1, last_id, exch_ms * NS_PER_MS))

        def run(books):
            for symbol, *args in scanned:
                assert books[symbol].apply_text_diff(*args)
        return best_of(run, lambda: live_adapter(stream).books)
    diffs = updates(stream)

    def run(books):
        for symbol, update in diffs:
            books[symbol].apply(update)

    return best_of(run, lambda: live_adapter(stream).books)


def stage_adapter(stream: Stream) -> int:
    payloads = stream.payloads

    def run(adapter):
        on_message = adapter.on_message
        for payload in payloads:
            on_message(0, payload, 3)

    return best_of(run, lambda: live_adapter(stream))


class Shard:
    """A segment with the stream's books, its writer, and an ExchangeFeed bound to it."""

    def __init__(self, stream: Stream) -> None:
        descs = [BookDesc("binance", s, s, 0) for s in stream.symbols]
        self.segment = Segment.create(unique_name("/cpustage"), descs, 1, DEPTH_PUBLISHED,
                                      RING_RECORDS)
        self.writer = self.segment.writer(0, wake="eventfd")
        self.index_of = {("binance", s): i for i, s in enumerate(stream.symbols)}
        self.wakes = 0

    def feed(self, adapter) -> ExchangeFeed:
        feed = ExchangeFeed(adapter, book_exchange="binance", lag_bound_ms=LAG_BOUND_MS)
        feed.attach(self.writer, self.index_of)
        return feed

    def count_wakes(self) -> None:
        wake = self.writer._wake

        def counted():
            self.wakes += 1
            wake()
        self.writer._wake = counted

    def close(self) -> None:
        self.segment.close()


def stage_publish(stream: Stream, shard: Shard) -> int:
    book = live_adapter(stream).books[stream.symbols[0]]
    n = len(stream.payloads)

    def run(_):
        publish = shard.writer.publish
        for i in range(n):
            publish(0, book, recv_ts_ns=i)

    return best_of(run)


def stage_eventfd(stream: Stream, shard: Shard) -> int:
    fd = shard.segment.eventfds[0]
    n = len(stream.payloads)

    def run(_):
        write = os.eventfd_write
        for _ in range(n):
            write(fd, 1)
        os.eventfd_read(fd)

    return best_of(run)


def stage_deliver(stream: Stream, shard: Shard) -> tuple[int, float]:
    payloads = stream.payloads

    def setup():
        feed = shard.feed(live_adapter(stream))
        session = Session(feed.adapter, feed.sink, on_frame=shard.writer.wake_ahead,
                          after_frame=shard.writer.flush)
        return session

    def run(session):
        deliver = session.deliver
        end_batch = getattr(session, "end_batch", None)   # a read's batch ends before the next
        pos = 0
        for n in stream.ticks:             # one obsim write each: about one read here
            for payload in payloads[pos:pos + n]:
                deliver(0, payload)
            pos += n
            if end_batch is not None:
                end_batch()

    shard.count_wakes()
    ns = best_of(run, setup)
    wakes_per_msg = shard.wakes / RUNS_EACH / len(payloads)
    return ns, wakes_per_msg


def net_blocks_per_msg(stream: Stream, shard: Shard) -> float:
    """Memory blocks still allocated per message after Session.deliver's whole path ran over
    the stream once warm (tracemalloc): what the hot path keeps per message, 0 when it
    allocates nothing that lives on (the two ints of each level the books gained or lost
    over the run are taken out: they are the books' state)."""
    import tracemalloc

    payloads = stream.payloads
    feed = shard.feed(live_adapter(stream))
    session = Session(feed.adapter, feed.sink, on_frame=shard.writer.wake_ahead,
                      after_frame=shard.writer.flush)
    half = len(payloads) // 2

    def deliver(part):
        for payload in part:
            session.deliver(0, payload)
        session.end_batch()

    def levels():
        return sum(book.depth(BID) + book.depth(ASK) for book in feed.adapter.books.values())

    deliver(payloads[:half])                # warm: every path taken once
    levels_before = levels()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        deliver(payloads[half:])
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    blocks = sum(stat.count_diff for stat in after.compare_to(before, "filename"))
    blocks -= 2 * (levels() - levels_before)   # a level is two ints (key, size) in the book
    return blocks / (len(payloads) - half)


# What main measures, in its order: each is one best_of (one callgrind dump pair with --marks).
RUNS = ("tls", "websocket", "parse", "apply", "adapter", "publish", "eventfd", "deliver")


def stages(raw: list, wakes_per_msg: float) -> dict:
    """The stages from the runs' costs (in RUNS order, any unit): each stage alone."""
    tls, ws, parse, apply, adapter, publish, eventfd, deliver = raw
    return {"tls": tls, "websocket": ws, "parse": parse, "apply": apply,
            "adapter": adapter - parse - apply, "publish": publish,
            "wake": eventfd * wakes_per_msg,
            "glue": deliver - adapter - publish - eventfd * wakes_per_msg,
            "total": tls + ws + deliver}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--books", type=int, default=2)
    p.add_argument("--messages", type=int, default=12_000)
    p.add_argument("--pure", action="store_true", help="the pure-Python reference paths")
    p.add_argument("--marks", action="store_true",
                   help="one run per stage between os.getppid() marks (cpu_instructions.py)")
    args = p.parse_args(argv)
    stream = Stream(args.books, args.messages)
    n = len(stream.payloads)
    shard = Shard(stream)
    try:
        with tempfile.TemporaryDirectory(prefix="cpu-stages-") as workdir:
            tls_ns = stage_tls(stream, Path(workdir))
        ws_ns = stage_websocket(stream)
        parse_ns = stage_parse(stream)
        apply_ns = stage_apply(stream)
        adapter_ns = stage_adapter(stream)
        publish_ns = stage_publish(stream, shard)
        eventfd_ns = stage_eventfd(stream, shard)
        deliver_ns, wakes = stage_deliver(stream, shard)
        blocks = None if MARKS else net_blocks_per_msg(stream, shard)
    finally:
        shard.close()
    raw = [tls_ns, ws_ns, parse_ns, apply_ns, adapter_ns, publish_ns, eventfd_ns, deliver_ns]
    per = stages(raw, wakes)
    mode = "pure Python" if args.pure else "compiled where built"
    parts = "  ".join(f"{name} {ns / n / 1e3:.2f}" for name, ns in per.items())
    print(f"cpu_stages: {args.books} books, {n} msgs ({mode}), us/msg: {parts}  "
          f"(eventfd writes/msg {wakes:.2f}; net new memory blocks/msg, warm: "
          f"{blocks if blocks is None else f'{blocks:.4f}'}; load {os.getloadavg()[0]:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
