"""The control server in a real observer process, met by real (and hostile) unix-socket peers."""

import array
import fcntl
import mmap
import os
import resource
import socket
import stat
import threading
import time

import pytest

import obclient
from obclient.protocol import ClientProtocol
from kit.procs import ObserverProcess, wait_until
from obproto import framing
from obproto import messages as m

REPLY_WAIT_S = 20.0


@pytest.fixture(scope="module")
def observer():
    with ObserverProcess(rate=500) as obs:
        obs.wait_ready().close()
        yield obs


def raw_connect(path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(REPLY_WAIT_S)
    sock.connect(path)
    return sock


def read_messages(sock, proto, fds=None):
    """Read once (blocking up to the socket timeout) and feed the protocol; b"" at EOF."""
    data, anc, _, _ = sock.recvmsg(1 << 16, socket.CMSG_SPACE(64 * 4))
    for level, kind, cdata in anc:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            got = array.array("i", cdata[: len(cdata) - len(cdata) % 4])
            if fds is None:
                for fd in got:
                    os.close(fd)
            else:
                fds.extend(got)
    if data:
        proto.receive_data(data)
    return data


def await_reply(sock, proto, req_id, fds=None):
    while (reply := proto.take_reply(req_id)) is None:
        if not read_messages(sock, proto, fds):
            raise EOFError("server closed before replying")
    return reply


def read_until_closed(sock, proto):
    """Everything the server sends until it closes the connection."""
    while read_messages(sock, proto):
        pass


def hello(sock, proto, fds=None):
    req_id, data = proto.hello()
    sock.sendall(data)
    return await_reply(sock, proto, req_id, fds)


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_bytes(pid):
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def test_socket_file_mode_is_0660(observer):
    mode = stat.S_IMODE(os.stat(observer.socket_path).st_mode)
    assert mode == 0o660
    assert stat.S_ISSOCK(os.stat(observer.socket_path).st_mode)


def test_handshake_passes_readonly_segment_fd_and_wake_fds(observer):
    sock, proto, fds = raw_connect(observer.socket_path), ClientProtocol("t"), []
    try:
        welcome = hello(sock, proto, fds)
        assert type(welcome) is m.Welcome
        assert welcome.fds_passed
        assert len(fds) == 1 + welcome.n_eventfds
        for wake_fd in fds[1:]:              # a private epoll each, never a shard's eventfd
            assert os.readlink(f"/proc/self/fd/{wake_fd}") == "anon_inode:[eventpoll]"
        seg_fd = fds[0]
        assert os.readlink(f"/proc/self/fd/{seg_fd}").startswith("/memfd:")   # no name
        assert fcntl.fcntl(seg_fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
        assert os.fstat(seg_fd).st_size == welcome.segment_bytes
        with pytest.raises(PermissionError):
            mmap.mmap(seg_fd, welcome.segment_bytes, mmap.MAP_SHARED,
                      mmap.PROT_READ | mmap.PROT_WRITE)
        view = mmap.mmap(seg_fd, welcome.segment_bytes, mmap.MAP_SHARED, mmap.PROT_READ)
        with pytest.raises(TypeError):
            view[0] = 1
        view.close()
    finally:
        for fd in fds:
            os.close(fd)
        sock.close()


def test_garbage_bytes_close_only_that_connection(observer):
    good = obclient.connect(observer.socket_path)
    bad, proto = raw_connect(observer.socket_path), ClientProtocol()
    bad.sendall(b"\xde\xad\xbe\xef" * 64)
    read_until_closed(bad, proto)
    bad.close()
    assert proto.unsolicited_errors[-1].code == m.ErrorCode.BAD_FRAME
    assert not good.snapshot("BTCUSD", 5).stale
    assert good.stats().observer["clients"] >= 1
    good.close()


def test_oversized_frame_gets_error_and_connection_survives(observer):
    sock, proto = raw_connect(observer.socket_path), ClientProtocol()
    hello(sock, proto)
    big = m.REQUEST_BYTES_MAX + 1
    sock.sendall(framing.HEADER.pack(big) + b"\x00" * big)
    while not proto.unsolicited_errors:
        assert read_messages(sock, proto)
    assert proto.unsolicited_errors[-1].code == m.ErrorCode.BAD_FRAME
    req_id, data = proto.request(m.ListBooks)
    sock.sendall(data)
    assert type(await_reply(sock, proto, req_id)) is m.BookList
    sock.close()


def test_truncated_and_unknown_messages_get_errors_then_repeated_ones_close(observer):
    sock, proto = raw_connect(observer.socket_path), ClientProtocol()
    hello(sock, proto)
    sock.sendall(framing.encode_frame(b"\x93\x01", 100))        # an array of 3 with 1 element
    sock.sendall(framing.encode_frame(b"\x92\xa8teleport\x07", 100))   # ["teleport", 7]
    assert await_reply(sock, proto, 7).code == m.ErrorCode.UNKNOWN_TYPE
    assert proto.unsolicited_errors[-1].code == m.ErrorCode.BAD_MSGPACK
    req_id, data = proto.request(m.ListBooks)                  # still served
    sock.sendall(data)
    assert type(await_reply(sock, proto, req_id)) is m.BookList
    sock.sendall(framing.encode_frame(b"\xc1", 100))           # third bad message: closed
    read_until_closed(sock, proto)
    assert "closing" in proto.unsolicited_errors[-1].message
    sock.close()


def test_request_before_hello_is_refused(observer):
    sock, proto = raw_connect(observer.socket_path), ClientProtocol()
    req_id, data = proto.request(m.StatsRequest)
    sock.sendall(data)
    assert await_reply(sock, proto, req_id).code == m.ErrorCode.NOT_READY
    sock.close()


def test_pipelined_requests_are_all_answered_in_order(observer):
    """1000 requests sent at once while the replies are read: every one answered, in order,
    and the connection stays (the server used to close it, without a word, past 64)."""
    requests_n = 1000
    sock, proto = raw_connect(observer.socket_path), ClientProtocol("pipeline")
    hello(sock, proto)
    kinds = (m.ListBooks, m.StatsRequest)
    frames = [proto.request(kinds[i % 2])[1] for i in range(requests_n)]
    first_id = proto._req_id_last - requests_n + 1
    sender = threading.Thread(target=sock.sendall, args=(b"".join(frames),))
    sender.start()
    while len(proto.replies) < requests_n:
        assert read_messages(sock, proto), "closed before every reply"
    sender.join(REPLY_WAIT_S)
    assert list(proto.replies) == list(range(first_id, first_id + requests_n))
    assert [type(r) for r in proto.replies.values()] == [
        (m.BookList, m.Stats)[i % 2] for i in range(requests_n)]
    assert not proto.unsolicited_errors
    req_id, data = proto.request(m.ListBooks)             # still open
    sock.sendall(data)
    assert type(await_reply(sock, proto, req_id)) is m.BookList
    sock.close()


def send_until_blocked(sock, frames) -> int:
    """Send frames without blocking until the socket would block; the count fully sent."""
    sock.setblocking(False)
    sent_n = 0
    for frame in frames:
        view = memoryview(frame)
        while view:
            try:
                view = view[sock.send(view):]
            except BlockingIOError:
                sock.setblocking(True)
                sock.settimeout(REPLY_WAIT_S)
                return sent_n
        sent_n += 1
    raise AssertionError("the server read every request without us reading a reply")


def test_a_client_that_never_reads_replies_is_held_back_not_closed(observer):
    """Requests from clients that never read their replies: the server stops reading them (back
    pressure), keeps them open with bounded memory and fds, serves everyone else meanwhile, and
    answers every request once they read."""
    pid = observer.proc.pid
    fds_before, rss_before = open_fds(pid), rss_bytes(pid)
    other = obclient.connect(observer.socket_path, client_name="other")
    stuck = []
    for i in range(3):
        sock, proto = raw_connect(observer.socket_path), ClientProtocol(f"stuck{i}")
        hello(sock, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        first_id = proto._req_id_last + 1
        frames = (proto.request(m.StatsRequest)[1] for _ in range(1_000_000))
        stuck.append((sock, proto, first_id, send_until_blocked(sock, frames)))
    for _ in range(20):                                    # everyone else is served meanwhile
        assert not other.snapshot("BTCUSD", 1).stale
        rows = {c["name"]: c for c in other.stats().clients}
    assert all(rows[f"stuck{i}"]["unsent_bytes"] for i in range(3))   # still there, held back
    assert rss_bytes(pid) < rss_before + 64 * 1024 * 1024
    assert open_fds(pid) <= fds_before + 4                 # `other` and the three
    sock, proto, first_id, sent_n = stuck[0]
    while len(proto.replies) < sent_n:                     # it reads at last: all answered
        assert read_messages(sock, proto), "closed before every reply"
    assert list(proto.replies) == list(range(first_id, first_id + sent_n))
    assert not proto.unsolicited_errors
    for sock, *_ in stuck:
        sock.close()
    wait_until(lambda: len(other.stats().clients) <= 2, REPLY_WAIT_S, "the stuck ones to go")
    other.close()


def test_subscriber_that_never_reads_loses_counted_updates_and_blocks_nobody(observer):
    pid = observer.proc.pid
    rss_before = rss_bytes(pid)
    stuck = obclient.Client(observer.socket_path, client_name="stuck")
    stuck.attach()
    stuck._att.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.subscribe([])                                    # every book, pushed; never read
    reader = obclient.connect(observer.socket_path, client_name="reader")

    def stuck_dropped():
        rows = [c for c in reader.stats().clients if c["name"] == "stuck"]
        return rows and rows[0]["dropped"] > 0

    wait_until(stuck_dropped, 60, "the stuck subscriber's queue to overflow")
    got = next(iter(reader.updates(["BTCUSD"], timeout_s=REPLY_WAIT_S)), None)
    assert got is not None                                 # the shard kept publishing
    row = [c for c in reader.stats().clients if c["name"] == "stuck"][0]
    assert row["queued"] <= 4096
    assert rss_bytes(pid) < rss_before + 64 * 1024 * 1024
    stuck.close()
    reader.close()


def test_socket_subscription_pushes_update_records(observer):
    client = obclient.connect(observer.socket_path)
    books = client.subscribe(["BTCUSD"])
    btc = client.book("BTCUSD")
    index = [b.book_index for b in client.books() if b.name == btc.name][0]
    assert books == [index]
    records = []
    for update in client.pushed_updates(timeout_s=REPLY_WAIT_S):
        records.append(update)
        if len(records) == 20:
            break
    assert len(records) == 20
    assert {u.book_index for u in records} == {index}
    seqs = [u.book_seq for u in records]
    assert seqs == sorted(seqs)
    assert all(u.bid_px < u.ask_px for u in records)
    client.close()


def test_socket_snapshot_matches_shared_memory_exponents(observer):
    client = obclient.connect(observer.socket_path)
    reply = client.request(m.SnapshotRequest, "BTCUSD", 3)
    snap = client.snapshot("BTCUSD", 3)
    assert reply.price_exp == snap.price_exp
    assert reply.size_exp == snap.size_exp
    assert len(reply.bids) == 3
    assert reply.bids[0][0] < reply.asks[0][0]
    client.close()


# A client name that would clear the operator's terminal, forge a log line and hide text.
EVIL_NAME = "evil\x1b[2J\r\n2026-01-01T00:00:00.000Z INFO forged\x00\x7f\x85\x9b\u2028\u202e!"
EVIL_ESCAPED = (r"evil\x1b[2J\r\n2026-01-01T00:00:00.000Z INFO forged\x00\x7f\x85\x9b"
                r"\u2028\u202e!")
UNSAFE_BYTES = [c.encode() for c in "\x1b\r\x00\x7f\x85\x9b\u2028\u202e"]


def test_a_client_name_with_control_characters_is_logged_escaped(observer):
    client = obclient.connect(observer.socket_path, client_name=EVIL_NAME)
    client.close()
    wanted = f'client="{EVIL_ESCAPED}"'
    wait_until(lambda: wanted in observer.log_text(), REPLY_WAIT_S, "the disconnect line")
    with open(observer.log_path, "rb") as f:
        raw = f.read()
    for unsafe in UNSAFE_BYTES:
        assert unsafe not in raw
    assert b"\n2026-01-01T00:00:00.000Z INFO forged" not in raw


def test_a_client_name_that_is_not_utf8_is_refused_and_never_logged(observer):
    """Invalid UTF-8 cannot reach the log through a name: msgpack strings are decoded strictly."""
    sock, proto = raw_connect(observer.socket_path), ClientProtocol()
    bad_name = b"\xa6\xff\xfe\x1b\r\x85x"                      # a 6-byte msgpack str, not UTF-8
    hello = b"\x96\xa5hello\x01\x01\x02" + bad_name + b"\xc2"  # ["hello", 1, 1, 2, <bad>, false]
    sock.sendall(framing.HEADER.pack(len(hello)) + hello)
    while not proto.unsolicited_errors:
        assert read_messages(sock, proto)
    assert proto.unsolicited_errors[-1].code == m.ErrorCode.BAD_MSGPACK
    sock.close()
    with open(observer.log_path, "rb") as f:
        assert b"\xff\xfe" not in f.read()
