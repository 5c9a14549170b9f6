"""A reader process for the multi-process shm tests: `python shm_reader_proc.py MODE ...`.

It receives the segment as an inherited O_RDONLY fd and a wake fd (never a name), as a client
does, and reports one JSON line (or a line per round) on stdout.

Modes:
  torn SHM_FD DEPTH DURATION_S TORN_STOP   snapshot book 0 in a loop, count copies that mix
                                           two publications (see shm_doubles.RampBook)
  follow SHM_FD WAKE_FD FINAL_ID           follow the ring until update_id FINAL_ID is seen;
                                           report overruns and ordering
  wakes SHM_FD WAKE_FD ROUNDS              per round: wait in epoll, then print the ids read and
                                           whether the wait returned an event
"""

from __future__ import annotations

import json
import sys
import time

from obproto.segment import SegmentReader
from obproto import layout


DISTINCT_MIN = 11      # publications a torn-mode reader must see before it stops
READ_DEADLINE_S = 50   # ...within this bound (under the test's own 60 s), however busy the host


def torn(shm_fd: int, depth: int, duration_s: float, torn_stop: int) -> dict:
    """Reads for `duration_s`, and on until it has seen the book move DISTINCT_MIN times: on a
    busy host the writer may have been descheduled for most of the window (it once saw 9)."""
    reader = SegmentReader(shm_fd)
    reads = torn_n = 0
    ids = set()
    started_s = time.monotonic()

    def reading() -> bool:
        elapsed_s = time.monotonic() - started_s
        return (torn_n < torn_stop and elapsed_s < READ_DEADLINE_S
                and (elapsed_s < duration_s or len(ids) < DISTINCT_MIN))

    while reading():
        for _ in range(100):
            try:
                snap = reader.snapshot(0)
            except AssertionError:  # the reader's own invariant check caught a mixed copy
                reads += 1
                torn_n += 1
                continue
            if snap.update_id == 0:
                continue  # not yet published
            reads += 1
            ids.add(snap.update_id)
            whole = (snap.n_bids == depth and snap.n_asks == depth
                     and bool((snap.bid_sz == snap.update_id).all())
                     and bool((snap.ask_sz == snap.update_id).all()))
            torn_n += not whole
    reader.close()
    return {"reads": reads, "torn": torn_n, "distinct": len(ids)}


def follow(shm_fd: int, wake_fd: int, final_id: int) -> dict:
    reader = SegmentReader(shm_fd, [wake_fd])
    follower = reader.follow([0])
    print("ready", flush=True)
    last_id = 0
    order_errors = resyncs = 0
    resync_ids = []
    deadline = time.monotonic() + 60
    while last_id != final_id and time.monotonic() < deadline:
        follower.wait(0.5)
        for update in follower.poll():
            if update.kind == layout.KIND_RESYNC:
                resyncs += 1
                resync_ids.append(update.update_id)
                order_errors += update.update_id < last_id
            else:
                order_errors += update.update_id != last_id + 1
            last_id = update.update_id
    return {"overruns": follower.overruns, "last_id": last_id, "order_errors": order_errors,
            "resyncs": resyncs, "resync_ids": resync_ids, "records": follower.records}


def wakes(shm_fd: int, wake_fd: int, rounds: int) -> None:
    reader = SegmentReader(shm_fd, [wake_fd])
    follower = reader.follow([0])
    print("ready", flush=True)
    for _ in range(rounds):
        events = reader.wait(10.0)
        ids = [u.update_id for u in follower.poll()]
        print(json.dumps({"ids": ids, "woke": bool(events)}), flush=True)


def main(argv: list[str]) -> None:
    mode, args = argv[0], argv[1:]
    if mode == "torn":
        print(json.dumps(torn(int(args[0]), int(args[1]), float(args[2]), int(args[3]))))
    elif mode == "follow":
        print(json.dumps(follow(int(args[0]), int(args[1]), int(args[2]))))
    elif mode == "wakes":
        wakes(int(args[0]), int(args[1]), int(args[2]))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main(sys.argv[1:])
