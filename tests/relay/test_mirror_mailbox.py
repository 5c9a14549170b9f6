"""observer/shard/natsfeed.py's Mailbox (NATS thread -> loom fiber) and MirrorBook, in one process:
latest wins per key and is counted, an older item never replaces a newer one, one eventfd write
per batch, and a mirrored book exports exactly the levels of its message."""

import os
import threading

import numpy as np

from observer.shard.natsfeed import Mailbox, MirrorBook
from obproto import relay as wire


def eventfd_count(fd: int) -> int:
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0


def test_latest_wins_per_key_counted_and_one_wake_per_batch():
    box = Mailbox()
    try:
        box.put("a:X", "first", (1, 1))
        box.put("a:X", "second", (1, 2))
        box.put("a:X", "older", (1, 1))        # a stream value fetched late: kept out
        box.put("b:Y", "only", (1, 7))
        assert eventfd_count(box.fd) == 1       # one write for the whole batch
        items = box.take()
        assert {k: v[1] for k, v in items.items()} == {"a:X": "second", "b:Y": "only"}
        assert box.coalesced == 1
        box.done(items)
        box.put("a:X", "third", (1, 3))         # after a take: the fiber is woken again
        assert eventfd_count(box.fd) == 1
        assert box.take()["a:X"][1] == "third"
    finally:
        box.close()


def test_puts_from_another_thread_are_all_seen_latest_per_key():
    box = Mailbox()
    n = 20000
    try:
        def produce():
            for i in range(1, n + 1):
                box.put(f"k:{i % 7}", i, (i,))
        thread = threading.Thread(target=produce)
        thread.start()
        latest = {}
        while thread.is_alive() or eventfd_count(box.fd):
            items = box.take()
            for key, (_, value) in items.items():
                assert value > latest.get(key, 0)   # never a step back
                latest[key] = value
            box.done(items)
        thread.join()
        items = box.take()
        latest.update({k: v for k, (_, v) in items.items()})
        assert latest == {f"k:{i % 7}": i for i in range(n - 6, n + 1)}
    finally:
        box.close()


def test_a_mirror_book_exports_its_message_exactly():
    msg = wire.BookMessage("book", 1, 1, "x:AB", 1, 1, 42, 5, 6, 7, 8, 0, -2, -4,
                           [1002, 1001, 1000], [1, 2, 3], [1003, 1004], [4, 5])
    book = MirrorBook("x:AB")
    book.load(msg)
    views = [np.zeros(2, np.int64) for _ in range(4)]
    assert book.export_top(*views) == (2, 2)            # truncated to the slot's depth
    assert [v.tolist() for v in views] == [[1002, 1001], [1, 2], [1003, 1004], [4, 5]]
    assert (book.price_exp, book.size_exp, book.update_id, book.exch_ts_ns) == (-2, -4, 42, 5)
