"""Sans-IO RFC 6455 framing: every frame shape fed whole, byte by byte, in odd chunks through
the zero-copy window, and with trailing data; every protocol violation gives its close code."""

from __future__ import annotations

import os
import struct
import zlib

import pytest

from observer.net.errors import ConnectionClosed, ProtocolError
from observer.net.wsconn import ClientConnection, State
from observer.net.wsframe import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONT,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    Close,
    FrameReader,
    Message,
    Ping,
    Pong,
    apply_mask,
    close_code_valid,
    encode_close,
    encode_frame,
)

SMALL_RECV = 64 * 1024  # small enough that a 100 KiB frame goes through direct mode


def server_frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0,
                 mask: bytes | None = None, long_form: int | None = None) -> bytes:
    """A frame as a server would send it (unmasked unless `mask` is given, to test the rule)."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | rsv | opcode
    mbit = 0x80 if mask else 0
    form = long_form if long_form is not None else (0 if n < 126 else 126 if n < 65536 else 127)
    if form == 0:
        head = bytes((b0, mbit | n))
    elif form == 126:
        head = bytes((b0, mbit | 126)) + struct.pack("!H", n)
    else:
        head = bytes((b0, mbit | 127)) + struct.pack("!Q", n)
    if mask:
        return head + mask + apply_mask(payload, mask)
    return head + payload


def deflate_message(data: bytes, compressor=None) -> bytes:
    comp = compressor or zlib.compressobj(wbits=-15)
    out = comp.compress(data) + comp.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def snapshot(event):
    """Copy an event out of the reader (message views are valid until the next call)."""
    if isinstance(event, Message):
        return ("text" if event.is_text else "binary", bytes(event.data))
    if isinstance(event, Ping):
        return ("ping", event.payload)
    if isinstance(event, Pong):
        return ("pong", event.payload)
    if isinstance(event, Close):
        return ("close", event.code, event.reason)
    raise AssertionError(event)


def drain(reader: FrameReader) -> list:
    out = []
    while (event := reader.next_event()) is not None:
        out.append(snapshot(event))
    return out


def feed_backlog(reader: FrameReader, data: bytes, chunk: int) -> list:
    events = []
    for i in range(0, len(data), chunk):
        reader.receive_data(data[i:i + chunk])
        events += drain(reader)
    return events


def feed_window(reader: FrameReader, data: bytes, chunk: int) -> list:
    """The transport's path: write into recv_window(), as recv_into / SSLObject.read do."""
    events = []
    pos = 0
    while pos < len(data):
        window = reader.recv_window()
        assert len(window) > 0
        n = min(len(window), chunk, len(data) - pos)
        window[:n] = data[pos:pos + n]
        reader.received(n)
        pos += n
        events += drain(reader)
    return events


def feed_modes(data: bytes, *, recv_bytes_max: int = SMALL_RECV, **kwargs):
    """Yields (mode name, events) for every way of feeding `data`."""
    big = len(data) > 20000
    chunks = (1, 7, 4093) if not big else (4093, 65536 + 3)
    yield "whole", feed_backlog(FrameReader(recv_bytes_max=recv_bytes_max, **kwargs), data,
                                len(data) or 1)
    for chunk in chunks:
        if not big or chunk > 1:
            reader = FrameReader(recv_bytes_max=recv_bytes_max, **kwargs)
            yield f"backlog/{chunk}", feed_backlog(reader, data, chunk)
        reader = FrameReader(recv_bytes_max=recv_bytes_max, **kwargs)
        yield f"window/{chunk}", feed_window(reader, data, chunk)


SHAPES = {
    "text-empty": ([server_frame(OP_TEXT, b"")], [("text", b"")]),
    "text-1": ([server_frame(OP_TEXT, b"x")], [("text", b"x")]),
    "text-125": ([server_frame(OP_TEXT, b"a" * 125)], [("text", b"a" * 125)]),
    "text-126": ([server_frame(OP_TEXT, b"b" * 126)], [("text", b"b" * 126)]),
    "text-utf8": ([server_frame(OP_TEXT, "ü€😀".encode())], [("text", "ü€😀".encode())]),
    "binary-65535": ([server_frame(OP_BINARY, b"\x00\xff" * 32767 + b"z")],
                     [("binary", b"\x00\xff" * 32767 + b"z")]),
    "binary-65536": ([server_frame(OP_BINARY, bytes(range(256)) * 256)],
                     [("binary", bytes(range(256)) * 256)]),
    "binary-direct": ([server_frame(OP_BINARY, os.urandom(300_000))], None),
    "non-minimal-length": ([server_frame(OP_TEXT, b"hi", long_form=127)], [("text", b"hi")]),
    "ping": ([server_frame(OP_PING, b"p1")], [("ping", b"p1")]),
    "ping-125": ([server_frame(OP_PING, b"q" * 125)], [("ping", b"q" * 125)]),
    "pong": ([server_frame(OP_PONG, b"")], [("pong", b"")]),
    "close-empty": ([server_frame(OP_CLOSE)], [("close", 1005, "")]),
    "close-code": ([server_frame(OP_CLOSE, struct.pack("!H", 1001) + b"bye")],
                   [("close", 1001, "bye")]),
    "close-4000": ([server_frame(OP_CLOSE, struct.pack("!H", 4000))], [("close", 4000, "")]),
    "fragments": ([server_frame(OP_TEXT, b"he", fin=False),
                   server_frame(OP_PING, b"mid"),
                   server_frame(OP_CONT, b"", fin=False),
                   server_frame(OP_CONT, b"llo")],
                  [("ping", b"mid"), ("text", b"hello")]),
    "fragments-utf8-split": ([server_frame(OP_TEXT, "€".encode()[:1], fin=False),
                              server_frame(OP_CONT, "€".encode()[1:])],
                             [("text", "€".encode())]),
    "fragments-large": ([server_frame(OP_BINARY, b"A" * 100_000, fin=False),
                         server_frame(OP_CONT, b"B" * 200_000, fin=False),
                         server_frame(OP_CONT, b"C" * 10)],
                        [("binary", b"A" * 100_000 + b"B" * 200_000 + b"C" * 10)]),
    "many": ([server_frame(OP_TEXT, str(i).encode() * (i % 300)) for i in range(200)],
             [("text", str(i).encode() * (i % 300)) for i in range(200)]),
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_frame_shapes_every_feeding(name):
    frames, expected = SHAPES[name]
    data = b"".join(frames)
    if expected is None:  # the direct-mode frame: payload is random, rebuild the expectation
        payload = frames[0][10:]
        expected = [("binary", payload)]
    for mode, events in feed_modes(data):
        assert events == expected, mode


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_frame_shapes_with_trailing_data(name):
    """The shape followed by the first 3 bytes of a 16-bit-length frame: events must not
    include anything from the trailing bytes, and the reader must keep them."""
    frames, expected = SHAPES[name]
    if expected is None:
        expected = [("binary", frames[0][10:])]
    trailing = server_frame(OP_TEXT, b"t" * 200)
    data = b"".join(frames) + trailing[:3]
    for mode, events in feed_modes(data):
        assert events == expected, mode
    reader = FrameReader(recv_bytes_max=SMALL_RECV)
    assert feed_backlog(reader, data, 5) == expected
    reader.receive_data(trailing[3:])
    assert drain(reader) == [("text", b"t" * 200)]


def test_small_message_is_a_view_of_the_receive_buffer():
    reader = FrameReader()
    window = reader.recv_window()
    frame = server_frame(OP_TEXT, b'{"e":"depthUpdate"}')
    window[:len(frame)] = frame
    reader.received(len(frame))
    msg = reader.next_event()
    assert msg.is_text and bytes(msg.data) == b'{"e":"depthUpdate"}'
    assert msg.data.obj is reader._buf  # parsed in place: no copy


def test_direct_mode_writes_payload_into_its_final_place():
    reader = FrameReader(recv_bytes_max=SMALL_RECV)
    payload = os.urandom(200_000)
    data = server_frame(OP_BINARY, payload)
    windows = []
    pos = 0
    while pos < len(data):
        window = reader.recv_window()
        windows.append(window.obj)
        n = min(len(window), 50_000, len(data) - pos)
        window[:n] = data[pos:pos + n]
        reader.received(n)
        pos += n
        msg = reader.next_event()
    assert bytes(msg.data) == payload
    assert msg.data.obj is reader._asm
    assert windows[-1] is reader._asm  # the transport wrote the tail straight into place


def test_message_object_is_reused_and_buffer_compacts():
    reader = FrameReader(recv_bytes_max=SMALL_RECV)
    frame = server_frame(OP_TEXT, b"x" * 300)
    seen = set()
    for i in range(2000):  # 600 KiB through a 64 KiB buffer: compaction must happen
        pos = 0
        while pos < len(frame):
            window = reader.recv_window()
            n = min(len(window), 1000, len(frame) - pos)
            window[:n] = frame[pos:pos + n]
            reader.received(n)
            pos += n
            if (msg := reader.next_event()) is not None:
                assert bytes(msg.data) == b"x" * 300
                seen.add(id(msg))
    assert reader.buffered_bytes == 0
    assert len(seen) == 1


def test_deflate_single_and_fragmented_with_context_takeover():
    comp = zlib.compressobj(wbits=-15)
    one = deflate_message(b"hello hello hello", comp)
    two = deflate_message(b"hello hello hello again", comp)  # refers back to message one
    data = (server_frame(OP_TEXT, one, rsv=0x40)
            + server_frame(OP_BINARY, two[:3], rsv=0x40, fin=False)
            + server_frame(OP_CONT, two[3:]))
    for mode, events in feed_modes(data, deflate=True):
        assert events == [("text", b"hello hello hello"),
                          ("binary", b"hello hello hello again")], mode


def test_deflate_uncompressed_message_passes_when_negotiated():
    events = feed_backlog(FrameReader(deflate=True), server_frame(OP_TEXT, b"plain"), 100)
    assert events == [("text", b"plain")]


def test_deflate_no_context_takeover_resets():
    data = b"".join(server_frame(OP_TEXT, deflate_message(b"abc" * 50), rsv=0x40)
                    for _ in range(3))
    reader = FrameReader(deflate=True, deflate_reset=True)
    assert feed_backlog(reader, data, 11) == [("text", b"abc" * 50)] * 3


VIOLATIONS = {
    "masked": (server_frame(OP_TEXT, b"hi", mask=b"abcd"), 1002, {}),
    "rsv2": (server_frame(OP_TEXT, b"hi", rsv=0x20), 1002, {}),
    "rsv3": (server_frame(OP_TEXT, b"hi", rsv=0x10), 1002, {}),
    "rsv1-no-deflate": (server_frame(OP_TEXT, b"hi", rsv=0x40), 1002, {}),
    "rsv1-on-control": (server_frame(OP_PING, b"", rsv=0x40), 1002, {"deflate": True}),
    "rsv1-on-continuation": (server_frame(OP_TEXT, deflate_message(b"a"), rsv=0x40, fin=False)
                             + server_frame(OP_CONT, b"", rsv=0x40), 1002, {"deflate": True}),
    "opcode-3": (server_frame(3, b"hi"), 1002, {}),
    "opcode-7-fragment": (server_frame(7, b"hi", fin=False), 1002, {}),
    "opcode-0xb": (server_frame(0xB, b""), 1002, {}),
    "control-126": (server_frame(OP_PING, b"x" * 126), 1002, {}),
    "fragmented-ping": (server_frame(OP_PING, b"x", fin=False), 1002, {}),
    "fragmented-close": (server_frame(OP_CLOSE, b"", fin=False), 1002, {}),
    "stray-continuation": (server_frame(OP_CONT, b"x"), 1002, {}),
    "text-inside-fragments": (server_frame(OP_TEXT, b"a", fin=False)
                              + server_frame(OP_TEXT, b"b"), 1002, {}),
    "length-top-bit": (bytes((0x82, 127)) + struct.pack("!Q", 1 << 63), 1002, {}),
    "too-big-single": (server_frame(OP_BINARY, b"z" * 1001), 1009, {"message_bytes_max": 1000}),
    "too-big-header-only": (bytes((0x82, 127)) + struct.pack("!Q", 1 << 40), 1009, {}),
    "too-big-fragments": (server_frame(OP_TEXT, b"a" * 600, fin=False)
                          + server_frame(OP_CONT, b"b" * 600), 1009,
                          {"message_bytes_max": 1000}),
    "too-big-inflated": (server_frame(OP_TEXT, deflate_message(b"\x00" * 5000), rsv=0x40), 1009,
                         {"deflate": True, "message_bytes_max": 1000}),
    "bad-utf8": (server_frame(OP_TEXT, b"ok \xff"), 1007, {}),
    "bad-utf8-truncated": (server_frame(OP_TEXT, "€".encode()[:2]), 1007, {}),
    "bad-utf8-fragments": (server_frame(OP_TEXT, b"a", fin=False)
                           + server_frame(OP_CONT, b"\xc0\xaf"), 1007, {}),
    "bad-utf8-direct": (server_frame(OP_TEXT, b"a" * 100_000 + b"\xed\xa0\x80"), 1007, {}),
    "corrupt-deflate": (server_frame(OP_TEXT, b"\xff\xff\xff\xff", rsv=0x40), 1007,
                        {"deflate": True}),
    "close-1-byte": (server_frame(OP_CLOSE, b"\x03"), 1002, {}),
    "close-999": (server_frame(OP_CLOSE, struct.pack("!H", 999)), 1002, {}),
    "close-1005": (server_frame(OP_CLOSE, struct.pack("!H", 1005)), 1002, {}),
    "close-1006": (server_frame(OP_CLOSE, struct.pack("!H", 1006)), 1002, {}),
    "close-2000": (server_frame(OP_CLOSE, struct.pack("!H", 2000)), 1002, {}),
    "close-5000": (server_frame(OP_CLOSE, struct.pack("!H", 5000)), 1002, {}),
    "close-bad-reason": (server_frame(OP_CLOSE, struct.pack("!H", 1000) + b"\xff"), 1007, {}),
}


@pytest.mark.parametrize("name", sorted(VIOLATIONS))
def test_protocol_violations_give_their_close_code(name):
    data, code, kwargs = VIOLATIONS[name]
    for chunk in (len(data), 1, 3):
        if chunk == 1 and len(data) > 5000:
            chunk = 4096
        reader = FrameReader(recv_bytes_max=SMALL_RECV, **kwargs)
        with pytest.raises(ProtocolError) as info:
            feed_backlog(reader, data, chunk)
        assert info.value.close_code == code, (chunk, str(info.value))


def test_violation_after_good_messages_keeps_them():
    good = server_frame(OP_TEXT, b"first")
    reader = FrameReader()
    reader.receive_data(good + server_frame(OP_TEXT, b"\xff"))
    assert snapshot(reader.next_event()) == ("text", b"first")
    with pytest.raises(ProtocolError):
        reader.next_event()


def test_reader_accepts_only_valid_close_codes():
    assert all(close_code_valid(c) for c in (1000, 1001, 1002, 1003, 1007, 1011, 1014, 3000,
                                             4999))
    assert not any(close_code_valid(c) for c in (0, 999, 1004, 1005, 1006, 1015, 2999, 5000))


# -- client frames --------------------------------------------------------------------------

def decode_client_frame(data: bytes) -> tuple[int, bool, bytes, int]:
    """Decode one masked client frame; returns (opcode, fin, payload, frame length)."""
    b0, b1 = data[0], data[1]
    assert b1 & 0x80, "client frames must be masked"
    n = b1 & 0x7F
    pos = 2
    if n == 126:
        n = struct.unpack_from("!H", data, 2)[0]
        pos = 4
        assert n >= 126
    elif n == 127:
        n = struct.unpack_from("!Q", data, 2)[0]
        pos = 10
        assert n >= 65536
    key = data[pos:pos + 4]
    payload = apply_mask(data[pos + 4:pos + 4 + n], key)
    return b0 & 0x0F, bool(b0 & 0x80), payload, pos + 4 + n


def test_rfc6455_masking_example():
    # RFC 6455 5.7: a single-frame masked text message containing "Hello".
    frame = encode_frame(OP_TEXT, b"Hello", mask_key=bytes.fromhex("37fa213d"))
    assert frame == bytes.fromhex("818537fa213d7f9f4d5158")


@pytest.mark.parametrize("size", [0, 1, 3, 125, 126, 127, 65535, 65536, 1 << 20])
def test_encode_frame_roundtrip_and_fresh_keys(size):
    payload = os.urandom(size)
    a = encode_frame(OP_BINARY, payload)
    b = encode_frame(OP_BINARY, payload)
    assert decode_client_frame(a) == (OP_BINARY, True, payload, len(a))
    if size:
        assert a != b  # a fresh key per frame


def test_encode_close():
    opcode, _, payload, _ = decode_client_frame(encode_close(1001, "going"))
    assert opcode == OP_CLOSE and payload == struct.pack("!H", 1001) + b"going"
    assert decode_client_frame(encode_close(1005))[2] == b""
    long_reason = decode_client_frame(encode_close(1000, "r" * 500))[2]
    assert len(long_reason) == 125


# -- connection rules ---------------------------------------------------------------------------

def test_ping_is_answered_with_same_payload():
    conn = ClientConnection(FrameReader())
    conn.reader.receive_data(server_frame(OP_PING, b"abc") + server_frame(OP_TEXT, b"m"))
    assert isinstance(conn.next_event(), Ping)
    out = conn.data_to_send()
    assert decode_client_frame(out)[:3] == (OP_PONG, True, b"abc")
    assert snapshot(conn.next_event()) == ("text", b"m")
    assert conn.data_to_send() == b""


def test_server_close_is_echoed_once_then_sending_fails():
    conn = ClientConnection(FrameReader())
    conn.reader.receive_data(server_frame(OP_CLOSE, struct.pack("!H", 1001) + b"restart"))
    event = conn.next_event()
    assert (event.code, event.reason) == (1001, "restart")
    opcode, _, payload, _ = decode_client_frame(conn.data_to_send())
    assert opcode == OP_CLOSE and payload == struct.pack("!H", 1001)
    assert conn.state is State.CLOSED
    with pytest.raises(ConnectionClosed) as info:
        conn.send_text("late")
    assert info.value.code == 1001
    assert conn.next_event() is None


def test_client_close_waits_for_server_close_and_does_not_echo():
    conn = ClientConnection(FrameReader())
    out = conn.send_close(1000, "done")
    assert decode_client_frame(out)[2] == struct.pack("!H", 1000) + b"done"
    assert conn.state is State.CLOSING
    assert conn.send_close() == b""
    conn.reader.receive_data(server_frame(OP_PING, b"x") + server_frame(OP_CLOSE, b"\x03\xe8"))
    assert isinstance(conn.next_event(), Ping)
    assert conn.data_to_send() == b""  # no pong after our close
    assert conn.next_event().code == 1000
    assert conn.state is State.CLOSED
    assert conn.data_to_send() == b""


def test_violation_queues_close_with_its_code():
    conn = ClientConnection(FrameReader())
    conn.reader.receive_data(server_frame(OP_TEXT, b"\xfe"))
    with pytest.raises(ProtocolError):
        conn.next_event()
    opcode, _, payload, _ = decode_client_frame(conn.data_to_send())
    assert opcode == OP_CLOSE and struct.unpack("!H", payload[:2])[0] == 1007
    assert conn.state is State.CLOSED


def test_receive_data_backlog_is_bounded():
    reader = FrameReader(recv_bytes_max=SMALL_RECV, message_bytes_max=1000)
    reader.receive_data(b"\x81\x02hi" * 1000)
    with pytest.raises(ProtocolError, match="backlog"):
        reader.receive_data(b"x" * SMALL_RECV)
    assert snapshot(reader.next_event()) == ("text", b"hi")  # what was accepted is intact


# Run in a fresh interpreter: tracemalloc counts every thread of the process, so in the test
# process a thread left running by any other test (a server's handler finishing late on a loaded
# machine, a recorder still polling) would add its allocations to the peak and to the growth.
_ALLOC_PROBE = r"""
import gc, json, struct, sys, tracemalloc
from observer.net.wsframe import OP_TEXT, FrameReader

keep_views = sys.argv[1] == "keep"      # the self-check: a per-message reference must be seen
payload = b'{"e":"depthUpdate","U":1001,"u":1004,"b":[["42000.10","0.5"]]}' * 4
frame = bytes((0x80 | OP_TEXT, 126)) + struct.pack("!H", len(payload)) + payload
blob = frame * 500
reader = FrameReader()
kept = []

def pump(rounds):
    count = 0
    for _ in range(rounds):
        pos = 0
        while pos < len(blob):
            window = reader.recv_window()
            n = min(len(window), 16384, len(blob) - pos)
            window[:n] = blob[pos:pos + n]
            reader.received(n)
            pos += n
            while (msg := reader.next_event()) is not None:
                count += len(msg.data) > 0
                if keep_views:
                    kept.append(msg.data)
    return count

pump(4)  # warm-up before tracing: the buffers exist already
gc.collect()
tracemalloc.start()
# Warm under tracing too, so that the references the reader keeps (the last view, its current
# offsets) were made while traced and show up in both snapshots.
pump(4)
before = tracemalloc.take_snapshot()
tracemalloc.reset_peak()
messages = pump(40)
after = tracemalloc.take_snapshot()
current, peak = tracemalloc.get_traced_memory()
tracemalloc.stop()
grown = [str(s) for s in after.compare_to(before, "lineno")
         if "observer/net/" in s.traceback[0].filename and s.size_diff > 0]
print(json.dumps({"messages": messages, "grown": grown, "peak": peak}))
"""


def _alloc_probe(mode: str) -> dict:
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _ALLOC_PROBE, mode], capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_receive_path_keeps_no_memory_per_message_once_warm():
    """tracemalloc: after warm-up, 20k text frames through the zero-copy window leave no
    allocation behind in observer/net (the per-message memoryview and the UTF-8 check's
    transient str are freed at once), and the peak stays far below one buffer's worth."""
    result = _alloc_probe("plain")
    assert result["messages"] == 20_000
    assert result["grown"] == []
    assert result["peak"] < 64 * 1024


def test_the_allocation_probe_sees_a_reference_kept_per_message():
    """The check above can fail: keeping each message's view shows up as growth in
    observer/net, attributed to the line that made it."""
    result = _alloc_probe("keep")
    assert result["messages"] == 20_000
    assert any("observer/net/wsframe.py" in line for line in result["grown"])


def test_persistent_inflater_reads_no_context_takeover_and_bfinal_messages():
    """What connect() relies on: without a reset, messages compressed each from a fresh
    compressor, sync-flushed or ended with BFINAL (Z_FINISH), all decode in sequence."""
    frames = []
    for i, mode in enumerate([zlib.Z_SYNC_FLUSH, zlib.Z_FINISH, zlib.Z_SYNC_FLUSH, zlib.Z_FINISH]):
        comp = zlib.compressobj(wbits=-15)
        out = comp.compress(b"message %d " % i * 30) + comp.flush(mode)
        payload = out[:-4] if mode == zlib.Z_SYNC_FLUSH else out
        frames.append(server_frame(OP_TEXT, payload, rsv=0x40))
    reader = FrameReader(deflate=True)
    assert feed_backlog(reader, b"".join(frames), 9) == [
        ("text", b"message %d " % i * 30) for i in range(4)]
