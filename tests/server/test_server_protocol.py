"""Server and client protocol machines meeting through an in-memory pair: no sockets."""

import os
import random

import msgpack
import pytest

from obclient.protocol import ClientProtocol, ProtocolError
from observer.server.protocol import (MESSAGES_PER_BATCH_MAX, OUTBOUND_BYTES_MAX,
                                     ServerConnection)
from obproto import framing
from obproto import messages as m


class TableCatalog:
    """A fixed table of books, answering what the supervisor's catalog answers."""

    def __init__(self):
        self.infos = [
            [0, "synthetic", "BTCUSD", "BTC-USD", 0, -2, -8, 32],
            [1, "synthetic", "ETHUSD", "ETH-USD", 0, -2, -8, 32],
            [2, "other", "ETHUSD", "ETHUSD", 0, -2, -8, 32],
        ]

    def hello_info(self):
        return {"server_name": "t", "pid": os.getpid(), "generation": 7, "segment_bytes": 4096,
                "layout_version": 1, "layout_hash": 99, "n_eventfds": 1, "heartbeat_period_s": 0.1}

    def handout_fds(self, conn_id):
        return [11, 12]

    def client_gone(self, conn_id):
        pass

    def book_infos(self):
        return self.infos

    def book_info(self, index):
        return self.infos[index]

    def book_keys(self):
        return [info[:3] for info in self.infos]

    def snapshot(self, index, depth):
        bids = [[10000 - i, 5] for i in range(5)][: depth or None]
        asks = [[10001 + i, 5] for i in range(5)][: depth or None]
        return {"seq": 8, "update_id": 42, "exch_ts_ns": 1, "recv_ts_ns": 2, "publish_ts_ns": 3,
                "stale": False,
                "lagging": False, "price_exp": -2, "size_exp": -8, "bids": bids, "asks": asks}

    def stats(self):
        return {"uptime_s": 1.0}, [{"book": "synthetic:BTCUSD", "updates": 3}], []


class Pair:
    """A ServerConnection and a ClientProtocol joined by byte copies."""

    def __init__(self, **kw):
        self.server = ServerConnection(TableCatalog(), conn_id=1, **kw)
        self.client = ClientProtocol("test")
        self.fds = []

    def send(self, data: bytes):
        self.server.receive_data(data)
        self.pump()

    def pump(self):
        while self.server.outbound:
            out = self.server.pop_outbound()
            self.fds.extend(out.fds)
            self.client.receive_data(out.data)

    def call(self, cls, *fields):
        req_id, data = self.client.request(cls, *fields)
        self.send(data)
        return self.client.take_reply(req_id)

    def hello(self):
        req_id, data = self.client.hello()
        self.send(data)
        return self.client.take_reply(req_id)


def raw_frame(value) -> bytes:
    return framing.encode_frame(msgpack.packb(value), m.REQUEST_BYTES_MAX)


def test_handshake_passes_fds_and_version():
    pair = Pair()
    welcome = pair.hello()
    assert type(welcome) is m.Welcome
    assert welcome.version == m.PROTOCOL_VERSION
    assert welcome.fds_passed
    assert pair.fds == [11, 12]
    assert welcome.generation == 7


def test_request_before_hello_is_refused():
    pair = Pair()
    reply = pair.call(m.ListBooks)
    assert type(reply) is m.Error
    assert reply.code == m.ErrorCode.NOT_READY
    assert not pair.server.closing


def test_version_mismatch_closes():
    pair = Pair()
    req_id, data = pair.client.request(m.Hello, 50, 60, "future", True)
    pair.send(data)
    reply = pair.client.take_reply(req_id)
    assert reply.code == m.ErrorCode.VERSION_MISMATCH
    assert pair.server.closing


def test_list_describe_snapshot_stats():
    pair = Pair()
    pair.hello()
    books = pair.call(m.ListBooks)
    assert [b[2] for b in books.books] == ["BTCUSD", "ETHUSD", "ETHUSD"]
    desc = pair.call(m.Describe, "btcusd")
    assert desc.book[0] == 0
    snap = pair.call(m.SnapshotRequest, "synthetic:ETHUSD", 3)
    assert type(snap) is m.Snapshot
    assert snap.book == 1
    assert snap.name == "synthetic:ETHUSD"
    assert len(snap.bids) == 3
    assert snap.update_id == 42
    stats = pair.call(m.StatsRequest)
    assert stats.observer["uptime_s"] == 1.0


def test_unknown_and_ambiguous_names():
    pair = Pair()
    pair.hello()
    unknown = pair.call(m.Describe, "DOGEUSD")
    assert unknown.code == m.ErrorCode.UNKNOWN_BOOK
    ambiguous = pair.call(m.SnapshotRequest, "ETHUSD", 0)
    assert ambiguous.code == m.ErrorCode.AMBIGUOUS_BOOK
    assert "synthetic:ETHUSD" in ambiguous.message
    assert not pair.server.closing      # name errors are not protocol violations
    assert pair.server.bad_messages == 0


def test_unknown_type_gets_error_and_connection_stays():
    pair = Pair()
    pair.hello()
    pair.send(raw_frame(["teleport", 5]))
    err = pair.client.take_reply(5)
    assert err.code == m.ErrorCode.UNKNOWN_TYPE
    assert not pair.server.closing
    assert type(pair.call(m.ListBooks)) is m.BookList


def test_bad_fields_and_bad_msgpack_count_then_close():
    pair = Pair()
    pair.hello()
    pair.send(raw_frame(["describe", 9, 12345]))            # name must be a str
    assert pair.client.take_reply(9).code == m.ErrorCode.BAD_MESSAGE
    pair.send(framing.encode_frame(b"\xc1\xc1\xc1", 100))   # 0xc1 is never valid msgpack
    assert pair.client.unsolicited_errors[-1].code == m.ErrorCode.BAD_MSGPACK
    assert not pair.server.closing
    pair.send(raw_frame({"not": "an array"}))
    assert pair.server.closing
    assert "closing" in pair.client.unsolicited_errors[-1].message


def test_oversized_frame_is_skipped_with_error():
    pair = Pair()
    pair.hello()
    big = m.REQUEST_BYTES_MAX + 10
    data = framing.HEADER.pack(big) + b"x" * big
    for i in range(0, len(data), 1000):                      # arrives in pieces
        pair.send(data[i:i + 1000])
    assert pair.client.unsolicited_errors[-1].code == m.ErrorCode.BAD_FRAME
    assert not pair.server.closing
    assert type(pair.call(m.ListBooks)) is m.BookList       # still in step after the skip


def test_garbage_stream_closes_at_once():
    pair = Pair()
    pair.send(b"\xff\xff\xff\xff garbage")
    assert pair.server.closing
    assert pair.server._decoder.buffered_bytes == 0


def test_truncated_message_waits_then_completes():
    pair = Pair()
    pair.hello()
    req_id, data = pair.client.request(m.Describe, "BTCUSD")
    for byte in data[:-1]:
        pair.send(bytes([byte]))
    assert pair.client.take_reply(req_id) is None
    pair.send(data[-1:])
    assert pair.client.take_reply(req_id).book[2] == "BTCUSD"


def test_missing_trailing_fields_take_defaults_and_extra_fields_are_ignored():
    pair = Pair()
    pair.hello()
    pair.send(raw_frame(["snapshot", 21, "BTCUSD"]))                  # depth defaults to 0
    assert len(pair.client.take_reply(21).bids) == 5
    pair.send(raw_frame(["snapshot", 22, "BTCUSD", 2, "from", "future"]))
    assert len(pair.client.take_reply(22).bids) == 2


def test_subscribe_queue_is_bounded_and_counts_drops():
    pair = Pair(queue_records_max=8)
    pair.hello()
    sub = pair.call(m.Subscribe, [])
    assert sub.books == [0, 1, 2]
    for seq in range(20):
        pair.server.push_update((0, seq, 0, 0, 1, 1, 2, 1, 0))
    assert len(pair.server.updates) == 8
    pair.client.receive_data(pair.server.take_updates())
    pushed = pair.client.pushed.popleft()
    assert pushed.dropped_total == 12
    assert [r[1] for r in pushed.records] == list(range(12, 20))     # the newest survive
    unsub = pair.call(m.Unsubscribe, ["BTCUSD"])
    assert unsub.books == [1, 2]


def test_pipelined_requests_past_the_high_water_mark_pause_decoding_and_all_get_replies():
    """A client that sends thousands of requests before reading is held back, not closed:
    the machine stops decoding at the high-water mark, keeps the rest, and resumes on drain."""
    pair = Pair()
    pair.hello()
    requests_n = 5000
    first_id = pair.client._req_id_last + 1
    data = b"".join(pair.client.request(m.ListBooks)[1] for _ in range(requests_n))
    served_before = pair.server.requests
    pair.server.receive_data(data)                 # all at once, and nothing read yet
    assert pair.server.requests - served_before == MESSAGES_PER_BATCH_MAX   # one batch...
    assert pair.server.backlogged
    while pair.server.backlogged:                  # ...the transport yields between them
        pair.server.resume()
    assert pair.server.paused
    assert not pair.server.closing
    assert pair.server.outbound_bytes <= OUTBOUND_BYTES_MAX
    assert pair.server.requests < requests_n       # the rest waits, undecoded
    resumes = 0
    while pair.server.outbound:
        pair.pump()                                # the transport sends...
        pair.server.resume()                       # ...and then lets the reader go on
        while pair.server.backlogged:
            pair.server.resume()
        resumes += 1
    assert resumes > 1
    assert list(pair.client.replies) == list(range(first_id, first_id + requests_n))
    assert all(type(r) is m.BookList for r in pair.client.replies.values())
    assert not pair.server.closing


def test_subscribe_too_many_names_is_bad_message():
    pair = Pair()
    pair.hello()
    reply = pair.call(m.Subscribe, ["BTCUSD"] * (m.NAMES_MAX + 1))
    assert reply.code == m.ErrorCode.BAD_MESSAGE


def test_random_bytes_never_raise():
    rng = random.Random(1234)
    for _ in range(300):
        server = ServerConnection(TableCatalog(), conn_id=2)
        for _ in range(rng.randrange(1, 6)):
            blob = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 64)))
            if rng.random() < 0.5:
                blob = framing.HEADER.pack(len(blob)) + blob
            server.receive_data(blob or b"\x00")
        assert server.outbound_bytes <= OUTBOUND_BYTES_MAX


def test_client_rejects_garbage_from_server():
    client = ClientProtocol()
    with pytest.raises(ProtocolError):
        client.receive_data(b"\xff\xff\xff\xff\x00")


def test_a_failing_catalog_gets_internal_error_and_nothing_else():
    pair = Pair()
    pair.hello()

    def broken(index, depth):
        raise RuntimeError("disk on fire")

    pair.server.catalog.snapshot = broken
    reply = pair.call(m.SnapshotRequest, "BTCUSD", 1)
    assert reply.code == m.ErrorCode.INTERNAL
    assert "disk on fire" in reply.message
    assert not pair.server.closing
    assert type(pair.call(m.ListBooks)) is m.BookList
