"""The WebSocket client against a raw peer that misbehaves on purpose, over real sockets:
every fault ends in a clear exception (and the close frame RFC 6455 asks for), never a hang."""

from __future__ import annotations

import struct
import time

import pytest

from netpeers import RawServer, read_client_frames, read_request, upgrade_reply
from observer import loom
from observer.net import websocket
from observer.net.errors import ConnectionClosed, NetTimeout, ProtocolError

def run_against(behaviour, client, backend):
    server = RawServer(behaviour)
    try:
        loop = loom.Loop(backend)
        try:
            result = loop.run(client, f"ws://127.0.0.1:{server.port}/feed")
        finally:
            # Closed before the server is checked: on io_uring a socket whose read timed out
            # is released (FIN sent) only once the loop has passed the cancel to the kernel.
            loop.close()
        assert server.done.wait(20), "server behaviour did not finish"
        assert len(server.results) == 1
        if isinstance(server.results[0], Exception):
            raise server.results[0]
        return result, server.results[0]
    finally:
        server.close()


def test_no_handshake_reply_times_out(backend):
    def behaviour(conn):
        read_request(conn)
        conn.settimeout(10)
        return conn.recv(10)  # b"" once the client gives up and closes

    def client(url):
        with pytest.raises(NetTimeout):
            websocket.connect(url, timeout_s=0.3)
        return True

    assert run_against(behaviour, client, backend) == (True, b"")


def test_wrong_accept_is_a_protocol_error(backend):
    def behaviour(conn):
        conn.sendall(upgrade_reply(read_request(conn), accept=b"d3Jvbmc="))
        conn.settimeout(10)
        return conn.recv(10)

    def client(url):
        with pytest.raises(ProtocolError, match="Accept"):
            websocket.connect(url)
        return True

    assert run_against(behaviour, client, backend) == (True, b"")


@pytest.mark.parametrize("frame,code", [
    (b"\x83\x00", 1002),                        # reserved opcode
    (b"\x81\x82abcd" + b"xx", 1002),            # masked server frame
    (b"\x89\x7e\x00\x7e" + b"p" * 126, 1002),   # ping over 125 bytes
    (b"\x81\x03\xff\xfe\xfd", 1007),            # invalid UTF-8
    (b"\x82\x7e\x04\x00" + b"z" * 1024, 1009),  # over message_bytes_max
])
def test_violation_sends_close_with_its_code(backend, frame, code):
    def behaviour(conn):
        conn.sendall(upgrade_reply(read_request(conn)) + b"\x81\x02ok" + frame)
        return read_client_frames(conn, 2)

    def client(url):
        ws = websocket.connect(url, message_bytes_max=1000)
        first = ws.recv().text()
        with pytest.raises(ProtocolError) as info:
            ws.recv()
        with pytest.raises(ConnectionClosed):
            ws.recv()
        return first, info.value.close_code, ws.closed

    (first, raised, closed), frames = run_against(behaviour, client, backend)
    assert (first, raised, closed) == ("ok", code, True)
    assert len(frames) == 1 and frames[0][0] == 0x8
    assert struct.unpack("!H", frames[0][1][:2])[0] == code


def test_close_unanswered_does_not_hang(backend):
    def behaviour(conn):
        conn.sendall(upgrade_reply(read_request(conn)) + b"\x81\x02hi")
        return read_client_frames(conn, 2, timeout_s=10)  # the close, then EOF

    def client(url):
        ws = websocket.connect(url)
        text = ws.recv().text()
        with loom.timeout(10.0):             # a deadline against a hang, not a measurement
            ws.close(1001, "leaving", timeout_s=0.3)
        return text, ws.closed

    (text, closed), frames = run_against(behaviour, client, backend)
    assert (text, closed) == ("hi", True)
    assert frames == [(0x8, struct.pack("!H", 1001) + b"leaving")]


def test_ping_flood_answered_in_order(backend):
    pings = b"".join(b"\x89\x04" + struct.pack("!I", i) for i in range(500))

    def behaviour(conn):
        conn.sendall(upgrade_reply(read_request(conn)) + pings + b"\x81\x04done")
        return read_client_frames(conn, 500)

    def client(url):
        ws = websocket.connect(url)
        text = ws.recv().text()
        ws.close(timeout_s=0.2)
        return text, ws.pings_received

    (text, count), frames = run_against(behaviour, client, backend)
    assert (text, count) == ("done", 500)
    assert frames == [(0xA, struct.pack("!I", i)) for i in range(500)]


def test_frames_trickling_one_byte_at_a_time(backend):
    message = "é" * 200

    def behaviour(conn):
        data = upgrade_reply(read_request(conn)) + b"\x81\x7e" + struct.pack(
            "!H", len(message.encode())) + message.encode() + b"\x88\x02\x03\xe8"
        for i in range(len(data)):
            conn.sendall(data[i:i + 1])
            if i % 50 == 0:
                time.sleep(0.001)
        return read_client_frames(conn, 1)

    def client(url):
        ws = websocket.connect(url)
        text = ws.recv().text()
        with pytest.raises(ConnectionClosed) as info:
            ws.recv()
        return text, info.value.code

    (text, code), frames = run_against(behaviour, client, backend)
    assert (text, code) == (message, 1000)
    assert frames == [(0x8, struct.pack("!H", 1000))]  # the close was echoed


@pytest.mark.parametrize("fin_pause_s", [0.0, 0.1], ids=["fin-with-data", "fin-after"])
def test_eof_mid_frame_is_1006(backend, fin_pause_s):
    """The peer's FIN arrives with the partial frame (usually one readiness edge; loom before
    d7281ea lost that EOF and the read hung) or after it (its own edge): 1006 either way."""
    def behaviour(conn):
        conn.sendall(upgrade_reply(read_request(conn)) + b"\x81\x7e\x01\x00partial")
        if fin_pause_s:
            time.sleep(fin_pause_s)
        return True

    def client(url):
        ws = websocket.connect(url, recv_timeout_s=30.0)   # a missed EOF ends as NetTimeout
        with pytest.raises(ConnectionClosed) as info:
            ws.recv()
        return info.value.code

    assert run_against(behaviour, client, backend) == (1006, True)


def test_close_beside_a_parked_reader_when_server_ignores_it(backend):
    def behaviour(conn):
        conn.sendall(upgrade_reply(read_request(conn)))
        return read_client_frames(conn, 2)  # the close frame, then EOF

    def client(url):
        ws = websocket.connect(url)
        codes = []

        def reader():
            try:
                ws.recv()
            except ConnectionClosed as exc:
                codes.append(exc.code)

        fiber = loom.current_fiber().loop.spawn(reader)
        loom.sleep(0.05)
        ws.close(4000, "bye", timeout_s=0.3)
        fiber.join(5)
        return codes, ws.closed

    (codes, closed), frames = run_against(behaviour, client, backend)
    assert len(codes) == 1 and closed
    assert frames == [(0x8, struct.pack("!H", 4000) + b"bye")]


def test_close_deadline_holds_while_server_keeps_pinging(backend):
    def behaviour(conn):
        conn.sendall(upgrade_reply(read_request(conn)))
        deadline = time.monotonic() + 15  # a safety stop for a client that never leaves
        try:
            while time.monotonic() < deadline:
                conn.sendall(b"\x89\x00")
                time.sleep(0.02)
        except OSError:
            return "client left"
        return "server gave up"

    def client(url):
        ws = websocket.connect(url)
        ws.close(timeout_s=0.3)
        return ws.closed

    assert run_against(behaviour, client, backend) == (True, "client left")
