"""The supervisor: owns the instance name, the segment, the control server and the heartbeat.

Why this split (C1): the supervisor creates everything that outlives a shard (the segment, the
eventfds, the control socket), and shards only write. Without --cores one shard runs in the
supervisor's loop; with --cores each shard is a pinned child process that `ShardManager`
(observer/process/shardmanager.py) starts (through the zygote, observer/process/zygote.py), watches and restarts, and
that calls `mark_shard_stale` here for a shard that died (the one time this process writes a
book).

Start-up order, and why:
1. Make this process non-dumpable (observer/process/prctl.py): it holds the shard eventfds and a
   writable mapping, which no other process of our uid may reach through ptrace,
   /proc/PID/mem, /proc/PID/fd or pidfd_getfd. Then take the instance lock
   (observer/process/instance.py): a second observer with the same name refuses to start while the
   first lives, and nothing of the first is touched.
2. Fork the reaper (observer/process/reaper.py) before anything is named, so that a kill -9 at any
   later instant has someone to remove the socket file.
3. Create the segment, a memfd: it never has a name, so nothing of it can be opened by another
   process or survive a kill -9 (C9). With --cores, start the zygote, which maps it read-write
   before the seal (the only way a shard process can write it later). Then seal it: from here
   no process can map or write it writable, whatever fd it holds (observer/shm/segment.py).
4. Bind the control socket (replacing a stale one left by a killed observer, refusing a live
   one), tell the reaper which file is ours, and serve the catalog below.

The catalog is what the control server asks (protocol.py): the handshake facts, the fds to pass
(new ones per client: a read-only reopen of the segment and a private wake fd per shard; the
shard eventfds never leave our processes), book descriptions, consistent snapshots (read like
any client, through a read-only `SegmentReader`) and stats. The supervisor also follows every
shard's ring and fans records out to clients that subscribed over the socket; it wakes on the
shard eventfds themselves (EPOLLET, through the reader's epoll) and never makes a shard wait.

A zygote that dies while we serve cannot be replaced (nothing can map the segment writable any
more): `zygote_exit` is logged once and `on_fatal` asks the command to stop, with a non-zero
exit, for a service manager to start the next generation (clients reattach, C9).
"""

from __future__ import annotations

import logging
import os
import time

from obproto.segment import SegmentReader
from observer import loom
from observer.process import prctl
from observer.config.settings import ClientLimits
from observer.process.instance import InstanceLock
from observer.telemetry.logs import log_event
from observer.process.reaper import Reaper
from observer.server.control import ControlServer
from observer.shard.runner import STOP_JOIN_S
from observer.process.shardmanager import exit_reason
from observer.shm import Segment, ShardWriter
from observer.shm.wakegroups import WakeGroups
from observer.process.zygote import Zygote
from obproto import layout
from obproto import messages as m
from obproto.layout import BookDesc

log = logging.getLogger("observer.process.supervisor")

HEARTBEAT_PERIOD_S = 0.1
RING_RECORDS = 1 << 14
FANOUT_BATCH_MAX = 1024      # ring records fanned out per pass before yielding
FANOUT_CHECK_S = 0.1         # wake-ups are hints: recheck the rings at least this often


class Supervisor:
    def __init__(self, loop, *, name: str, book_descs: list[BookDesc], shards_n: int,
                 depth_max: int, socket_path: str, allow_uids=(), allow_gids=(),
                 client_limits: ClientLimits = ClientLimits(),
                 heartbeat_period_s: float = HEARTBEAT_PERIOD_S, shard_processes: bool = False):
        self.loop = loop
        self.shard_processes = shard_processes  # --cores: shards are forks of the zygote
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
        self.zygote: Zygote | None = None
        self.on_fatal = None                    # called once if the instance cannot go on
        self.failure = ""                       # why, when it could not
        self._books: list = []                  # BookInfo per index, fixed at start-up
        self._book_keys: list = []
        self._wake_groups = WakeGroups()        # which wake group each new client joins
        self._wake_group_of: dict[int, int] = {}  # conn_id -> its wake group
        self.server = ControlServer(loop, self, socket_path, allow_uids=allow_uids,
                                    allow_gids=allow_gids, limits=client_limits)
        self.started_s = time.monotonic()
        self._fibers: list = []
        self.shard_manager = None               # observer/process/shardmanager.py, when shards are processes

    def start(self) -> None:
        """Lock the name, create and seal the segment, serve the socket (the order is the
        module essay's). Undoes itself on failure."""
        prctl.forbid_inspection()
        self.lock.acquire()
        try:
            self.reaper = Reaper(self.socket_path)
            self._create_segment()
            self.server.start()
            self.reaper.watch()
        except BaseException:
            self.stop()
            raise
        self._fibers.append(self.loop.spawn(self._heartbeat))
        self._fibers.append(self.loop.spawn(self._fanout))
        if self.zygote is not None:
            self.zygote.serve(self.loop, self._zygote_exited)

    def _create_segment(self) -> None:
        self.segment = Segment.create(f"observer-{self.name}", self.book_descs, self.shards_n,
                                      self.depth_max, RING_RECORDS,
                                      heartbeat_period_s=self.heartbeat_period_s)
        if self.shard_processes:               # before the seal: see the module essay
            self.zygote = Zygote(self.name, self.segment.fd, self.segment.all_eventfds,
                                 self.segment.board_fd)
        self.segment.seal()
        self.reader_fd = self.segment.reader_fd()
        self.reader = SegmentReader(self.reader_fd, self.segment.eventfds)   # EPOLLET on each
        self._books = self.reader.books()
        self._book_keys = [[b.book_index, b.exchange, b.symbol, b.native] for b in self._books]

    def stop(self) -> None:
        """Stop serving, mark the segment closed (clients reattach), release all. Idempotent."""
        loom.cancel_and_join(self._fibers, timeout_s=STOP_JOIN_S)
        self._fibers.clear()
        if self.zygote is not None:
            self.zygote.stop()                  # after the shards: it reports their exits
            self.zygote = None
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
        """Publish every book of a DEAD shard as stale (process/shardmanager.py calls this).

        Safe only because that shard's process has ended: one writer per book at any time. The
        writer is made now, so it starts from the sequence words the dead shard left, and is
        dropped at once, so the next shard process is again the only writer.
        """
        writer = ShardWriter(self.segment, shard_index)
        try:
            for book_index in writer.book_indexes:
                writer.mark_stale(book_index)
            writer.flush()
        finally:
            writer.release()

    def _zygote_exited(self, returncode: int | None) -> None:
        """The zygote died under us: fatal for the instance (module essay)."""
        self.failure = f"zygote exited ({exit_reason(returncode)}): no shard can be restarted"
        log_event(log, "zygote_exit", level=logging.CRITICAL, zygote_pid=self.zygote.pid,
                  reason=exit_reason(returncode), action="stopping the observer")
        if self.on_fatal is not None:
            self.on_fatal()

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

    def handout_fds(self, conn_id: int) -> list[int]:
        """New fds for connection `conn_id` (Segment.client_fds), its wake fds on the group it
        joins (observer/shm/wakegroups.py); the control server closes them once sent. The
        board says the group has a client before the client can wait on it."""
        group = self._wake_groups.join()
        try:
            self.segment.set_wake_groups(self._wake_groups.mask)
            fds = self.segment.client_fds(group)
        except BaseException:
            self._wake_groups.leave(group)
            raise
        self._wake_group_of[conn_id] = group
        return fds

    def client_gone(self, conn_id: int) -> None:
        """Connection `conn_id` closed: its wake group has one client less."""
        group = self._wake_group_of.pop(conn_id, None)
        if group is not None:
            self._wake_groups.leave(group)
            if self.segment is not None:
                self.segment.set_wake_groups(self._wake_groups.mask)

    def book_keys(self) -> list[list]:
        """[index, exchange, symbol, native] per book, for name resolution (fixed at start-up)."""
        return self._book_keys

    def book_infos(self) -> list[list]:
        return [self.book_info(i) for i in range(len(self.book_descs))]

    def book_info(self, book_index: int) -> list:
        """A BookInfo record; the exponents are read from the slot (a rescale changes them)."""
        b = self._books[book_index]
        snap = self.reader.snapshot(book_index, 1)      # the head is enough
        return [b.book_index, b.exchange, b.symbol, b.native, b.shard_index, snap.price_exp,
                snap.size_exp, self.depth_max]

    def snapshot(self, book_index: int, depth: int) -> dict:
        snap = self.reader.snapshot(book_index, depth)   # 0: all, as on the wire
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
            top = self.reader.snapshot(info.book_index, 1)
            books.append({"book": info.name, "exchange": info.exchange, "shard": info.shard_index,
                          "stale": top.stale, "lagging": top.lagging,
                          **({"invalid": top.note} if top.invalid else {}),
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
