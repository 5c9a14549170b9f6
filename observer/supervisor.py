"""The supervisor: owns the instance name, the segment, the control server and the heartbeat.

Why this split (C1): the supervisor creates everything that outlives a shard (the segment, the
eventfds, the control socket), and shards only write. Without --cores one shard runs in the
supervisor's loop; with --cores each shard is a pinned child process that `ShardManager`
(observer/shards.py) starts, watches and restarts, and that calls `mark_shard_stale` here for a
shard that died (the one time this process writes a book).

Start-up order, and why:
1. Take the instance lock (observer/instance.py): a second observer with the same name refuses
   to start while the first lives, and nothing of the first is touched.
2. Create the segment under a name unique to this process and generation, open one `O_RDONLY`
   fd on it for clients, then unlink the name at once. From then on the segment exists only
   through fds (ours, the shards', the clients'), so kill -9 of the observer leaves nothing in
   /dev/shm: the kernel frees the memory when the last fd or mapping goes (C9).
3. Bind the control socket (replacing a stale one left by a killed observer, refusing a live
   one) and serve the catalog below; fork the reaper (observer/reaper.py), which removes the
   socket file if we die without doing it ourselves.

The catalog is what the control server asks (protocol.py): the handshake facts, the fds to pass,
book descriptions, consistent snapshots (read like any client, through a read-only
`SegmentReader`) and stats. The supervisor also follows every shard's ring and fans records out
to clients that subscribed over the socket; it wakes on the shard eventfds (EPOLLET, through the
reader's epoll) and never makes a shard wait.
"""

from __future__ import annotations

import logging
import os
import secrets
import time

from obclient.segment import SegmentReader
from observer import loom
from observer.config import ClientLimits
from observer.instance import InstanceLock
from observer.reaper import Reaper
from observer.server.control import ControlServer
from observer.shard import STOP_JOIN_S
from observer.shm import Segment
from proto import layout
from proto import messages as m
from proto.layout import BookDesc

log = logging.getLogger("observer.supervisor")

HEARTBEAT_PERIOD_S = 0.1
RING_RECORDS = 1 << 14
FANOUT_BATCH_MAX = 1024      # ring records fanned out per pass before yielding
FANOUT_CHECK_S = 0.1         # wake-ups are hints: recheck the rings at least this often


class Supervisor:
    def __init__(self, loop, *, name: str, book_descs: list[BookDesc], shards_n: int,
                 depth_max: int, socket_path: str, allow_uids=(), allow_gids=(),
                 client_limits: ClientLimits = ClientLimits(),
                 heartbeat_period_s: float = HEARTBEAT_PERIOD_S):
        self.loop = loop
        self.name = name
        self.book_descs = list(book_descs)
        self.shards_n = shards_n
        self.depth_max = depth_max
        self.socket_path = socket_path
        self.heartbeat_period_s = heartbeat_period_s
        self.lock = InstanceLock(name)
        self.segment: Segment | None = None
        self.reader: SegmentReader | None = None
        self.reader_fd = -1
        self.reaper: Reaper | None = None
        self._books: list = []                  # BookInfo per index, fixed at start-up
        self._book_keys: list = []
        self.server = ControlServer(loop, self, socket_path, allow_uids=allow_uids,
                                    allow_gids=allow_gids, limits=client_limits)
        self.started_s = time.monotonic()
        self._fibers: list = []
        self.shard_manager = None               # observer/shards.py, when shards are processes

    def start(self) -> None:
        """Lock the name, create the segment, serve the socket. Undoes itself on failure."""
        self.lock.acquire()
        try:
            self._create_segment()
            self.server.start()
            self.reaper = Reaper(self.socket_path)
        except BaseException:
            self.stop()
            raise
        self._fibers.append(self.loop.spawn(self._heartbeat))
        self._fibers.append(self.loop.spawn(self._fanout))

    def _create_segment(self) -> None:
        shm_name = f"observer-{self.name}-{os.getpid()}-{secrets.token_hex(4)}"
        self.segment = Segment.create(shm_name, self.book_descs, self.shards_n, self.depth_max,
                                      RING_RECORDS, heartbeat_period_s=self.heartbeat_period_s)
        try:
            self.reader_fd = self.segment.reader_fd()
        finally:
            self.segment.unlink()
        self.reader = SegmentReader(self.reader_fd, self.segment.eventfds)   # EPOLLET on each
        self._books = self.reader.books()
        self._book_keys = [[b.book_index, b.exchange, b.symbol] for b in self._books]

    def stop(self) -> None:
        """Stop serving, mark the segment closed (clients reattach), release all. Idempotent."""
        loom.cancel_and_join(self._fibers, timeout_s=STOP_JOIN_S)
        self._fibers.clear()
        self.server.close()
        if self.reaper is not None:
            self.reaper.stop()
            self.reaper = None
        if self.reader is not None:
            self.loop.forget(self.reader.fileno())   # the fan-out waited on it through loom
            self.reader.close()
            self.reader = None
        if self.segment is not None:
            self.segment.mark_closed()
            self.segment.close()
            self.segment = None
        if self.reader_fd >= 0:
            os.close(self.reader_fd)
            self.reader_fd = -1
        self.lock.release()

    def mark_shard_stale(self, shard_index: int) -> None:
        """Publish every book of a DEAD shard as stale (observer/shards.py calls this).

        Safe only because that shard's process has ended: one writer per book at any time. The
        writer is made now, so it starts from the sequence words the dead shard left, and is
        dropped at once, so the next shard process is again the only writer.
        """
        from observer.shm.writer import ShardWriter

        writer = ShardWriter(self.segment, shard_index)
        try:
            for book_index in writer.book_indexes:
                writer.mark_stale(book_index)
            writer.flush()
        finally:
            writer.release()

    # -- fibers ------------------------------------------------------------------------------

    def _heartbeat(self) -> None:
        while True:
            self.segment.heartbeat()
            self.segment.set_clients(len(self.server.clients))  # for wake mode auto
            loom.sleep(self.heartbeat_period_s)

    def _fanout(self) -> None:
        """Follow every ring; queue records for socket subscribers (bounded, never blocking).

        With no subscriber the rings are not read at all (a follower starts at the heads when
        the first one appears), so the shard's publishing costs this process nothing extra.
        """
        follower = None
        epoll_fd = self.reader.fileno()
        while True:
            if not self.server.has_subscribers():
                follower = None
                loom.sleep(FANOUT_CHECK_S)
                continue
            if follower is None:
                follower = self.reader.follow()
            for update in follower.poll(FANOUT_BATCH_MAX):
                self.server.fanout(update.book_index, tuple(update))
            if follower.pending():
                loom.sleep(0)
                continue
            try:
                with loom.timeout(FANOUT_CHECK_S):
                    loom.wait_readable(epoll_fd)
            except TimeoutError:
                pass
            self.reader.wait(0)      # drain the inner epoll so its fd is quiet until next edge

    # -- the catalog the control server serves -----------------------------------------------

    def hello_info(self) -> dict:
        g = self.reader.geometry
        return {"server_name": self.name, "pid": os.getpid(), "generation": self.reader.generation,
                "segment_bytes": g.segment_bytes, "layout_version": layout.LAYOUT_VERSION,
                "layout_hash": layout.LAYOUT_HASH, "n_eventfds": len(self.segment.eventfds),
                "heartbeat_period_s": self.heartbeat_period_s}

    def handout_fds(self) -> list[int]:
        return [self.reader_fd, *self.segment.eventfds]

    def book_keys(self) -> list[list]:
        """[index, exchange, symbol] per book, for name resolution (fixed at start-up)."""
        return self._book_keys

    def book_infos(self) -> list[list]:
        return [self.book_info(i) for i in range(len(self.book_descs))]

    def book_info(self, book_index: int) -> list:
        """A BookInfo record; the exponents are read from the slot (a rescale changes them)."""
        b = self._books[book_index]
        snap = self.reader.snapshot(book_index, 0)
        return [b.book_index, b.exchange, b.symbol, b.native, b.shard_index, snap.price_exp,
                snap.size_exp, self.depth_max]

    def snapshot(self, book_index: int, depth: int) -> dict:
        snap = self.reader.snapshot(book_index, depth or None)
        return {"seq": snap.seq, "update_id": snap.update_id, "exch_ts_ns": snap.exch_ts_ns,
                "recv_ts_ns": snap.recv_ts_ns, "publish_ts_ns": snap.publish_ts_ns,
                "stale": snap.stale, "lagging": snap.lagging, "price_exp": snap.price_exp,
                "size_exp": snap.size_exp,
                "bids": [[int(p), int(s)] for p, s in zip(snap.bid_px, snap.bid_sz)],
                "asks": [[int(p), int(s)] for p, s in zip(snap.ask_px, snap.ask_sz)]}

    def stats(self) -> tuple[dict, list, list]:
        now_ns = time.time_ns()
        observer = {"name": self.name, "pid": os.getpid(), "generation": self.reader.generation,
                    "uptime_s": round(time.monotonic() - self.started_s, 3),
                    "books": len(self.book_descs), "shards": self.shards_n,
                    "protocol_version": m.PROTOCOL_VERSION, **self.server.stats()}
        observer["shard_list"] = self.shard_stats(now_ns)
        observer["shard_restarts"] = sum(s["restarts"] for s in observer["shard_list"])
        books = []
        for info in self._books:
            counters = self.reader.book_stats(info.book_index)
            last_ns = counters["last_update_ns"]
            top = self.reader.snapshot(info.book_index, 0)
            books.append({"book": info.name, "exchange": info.exchange, "shard": info.shard_index,
                          "stale": top.stale, "lagging": top.lagging,
                          "last_update_age_s": round((now_ns - last_ns) / 1e9, 3) if last_ns else None,
                          **{k: v for k, v in counters.items() if not k.startswith("reserved")}})
        return observer, books, self.server.client_stats()


    def shard_stats(self, now_ns: int) -> list[dict]:
        """Per shard: the segment's view (ring head, flushes, heartbeat age, writer pid) and,
        when shards are processes, the supervisor's (alive, restarts, core, last exit)."""
        managed = self.shard_manager.stats() if self.shard_manager is not None else None
        out = []
        for i in range(self.shards_n):
            seg = self.reader.shard_stats(i)
            heartbeat_ns = seg["heartbeat_ns"]
            row = {"shard": i, "core": None, "pid": seg["writer_pid"], "alive": True,
                   "restarts": 0, "last_exit": None,
                   "books": sum(1 for b in self._books if b.shard_index == i),
                   "records": seg["head"], "flushes": seg["flushes"],
                   "heartbeat_age_s": round((now_ns - heartbeat_ns) / 1e9, 3)
                   if heartbeat_ns else None}
            if managed is not None:
                row.update(managed[i])
            out.append(row)
        return out
