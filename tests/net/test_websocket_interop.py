"""Our WebSocket client on loom against the `websockets` library as the server, over TLS with
a certificate made in the test (and plain ws:// once): echo, fragments, 8 MiB messages, server
pings, compression on and off, server-initiated close, abrupt disconnect, timeouts."""

from __future__ import annotations

import gc
import socket
import weakref

import pytest

from netpeers import WsServer, run, server_ssl_context
from observer import loom
from observer.net import websocket
from observer.net.errors import (
    ConnectError,
    ConnectionClosed,
    HttpError,
    NetTimeout,
    ProtocolError,
    TlsError,
)



def url(server, path):
    scheme = "ws" if server.ssl_ctx is None else "wss"
    return f"{scheme}://127.0.0.1:{server.port}{path}"


@pytest.mark.parametrize("compression", [True, False], ids=["client-deflate", "client-plain"])
def test_echo(ws_server, certs, compression, backend):
    def main():
        ws = websocket.connect(url(ws_server, "/echo"), ca_file=str(certs["cert"]),
                               compression=compression, timeout_s=10)
        out = []
        for i in range(50):
            ws.send_text(f"hello {i} ü" * (i + 1))
            msg = ws.recv()
            out.append((msg.is_text, msg.text()))
        ws.send_binary(b"\x00\xff" * 1000)
        msg = ws.recv()
        out.append((msg.is_text, bytes(msg.data)))
        ws.close()
        return out, ws.close_code

    out, code = run(main, backend=backend)
    assert out[:50] == [(True, f"hello {i} ü" * (i + 1)) for i in range(50)]
    assert out[50] == (False, b"\x00\xff" * 1000)
    assert code == 1000


def test_fragmented_messages(ws_server, certs, backend):
    def main():
        ws = websocket.connect(url(ws_server, "/fragments"), ca_file=str(certs["cert"]))
        first = ws.recv().text()
        second = ws.recv()
        result = (first, second.is_text, bytes(second.data))
        ws.close()
        return result

    assert run(main, backend=backend) == ("fragmented täxt", False, b"\x00\x01" + b"\x02" * 70000)


def test_8_mib_messages(ws_server, certs, backend):
    size = 8 * 1024 * 1024

    def main():
        ws = websocket.connect(url(ws_server, "/big"), ca_file=str(certs["cert"]))
        binary = ws.recv()
        ok_binary = (not binary.is_text and len(binary.data) == size
                     and bytes(binary.data[:512]) == bytes(range(256)) * 2
                     and bytes(binary.data[-256:]) == bytes(range(256)))
        text = ws.recv()
        ok_text = text.is_text and len(text.data) == size and bytes(text.data[-3:]) == b"xxx"
        ws.close()
        return ok_binary, ok_text

    assert run(main, backend=backend) == (True, True)


def test_8_mib_echo_upstream(ws_server, certs):
    payload = bytes(range(251)) * (8 * 1024 * 1024 // 251)

    def main():
        ws = websocket.connect(url(ws_server, "/echo"), ca_file=str(certs["cert"]))
        ws.send_binary(payload)
        echoed = bytes(ws.recv().data)
        ws.close()
        return echoed == payload

    assert run(main)


def test_message_limit_closes_with_1009(ws_server, certs):
    def main():
        ws = websocket.connect(url(ws_server, "/big"), ca_file=str(certs["cert"]),
                               message_bytes_max=1024 * 1024)
        with pytest.raises(ProtocolError) as info:
            ws.recv()
        assert info.value.close_code == 1009
        assert ws.closed
        with pytest.raises(ConnectionClosed):
            ws.recv()
        return True

    assert run(main)


def test_server_ping_is_answered(ws_server, certs, backend):
    def main():
        ws = websocket.connect(url(ws_server, "/ping"), ca_file=str(certs["cert"]))
        text = ws.recv().text()  # the server sends this only after our pong arrived
        pings = ws.pings_received
        ws.close()
        return text, pings

    assert run(main, backend=backend) == ("pong-received", 1)


def test_client_ping_gets_pong(ws_server, certs):
    def main():
        ws = websocket.connect(url(ws_server, "/echo"), ca_file=str(certs["cert"]))
        ws.ping(b"hi")
        ws.send_text("after ping")
        text = ws.recv().text()
        pongs = ws.pongs_received
        ws.close()
        return text, pongs

    assert run(main) == ("after ping", 1)


def test_server_initiated_close(ws_server, certs, backend):
    def main():
        ws = websocket.connect(url(ws_server, "/close"), ca_file=str(certs["cert"]))
        first = ws.recv().text()
        with pytest.raises(ConnectionClosed) as info:
            ws.recv()
        with pytest.raises(ConnectionClosed):
            ws.send_text("too late")
        return first, info.value.code, info.value.reason, ws.closed

    assert run(main, backend=backend) == ("closing", 4001, "bye now", True)


ENDINGS = {"server-close": "/close", "abort": "/abort", "violation": "/big", "client-close": "/echo"}


@pytest.mark.parametrize("ending", ENDINGS)
def test_a_dead_connection_is_freed_without_the_cyclic_gc(ws_server, certs, ending):
    """However it ended (the server's close, EOF without one, a violation we closed on, our own
    close), a dead WebSocket is freed by reference counting alone, with its TLS state and
    frame buffer. It used to keep the exception it raised, whose traceback holds frames that
    hold the WebSocket: a cycle only a full GC frees (over 320 KiB per reconnect), and a shard
    in steady state allocates so few containers that it may not run one for hours."""
    def main():
        ws = websocket.connect(url(ws_server, ENDINGS[ending]), ca_file=str(certs["cert"]),
                               message_bytes_max=1 << 20)
        if ending == "client-close":
            ws.close()
        else:
            try:
                while True:
                    ws.recv()
            except (ConnectionClosed, ProtocolError):
                pass
        try:
            ws.recv()                       # raised again from what was recorded
        except ConnectionClosed:
            pass
        assert ws.closed
        return weakref.ref(ws)

    gc.disable()
    try:
        ref = run(main)
        kept = ref() is not None
    finally:
        gc.enable()
    assert not kept


def test_abrupt_disconnect(ws_server, certs, backend):
    def main():
        ws = websocket.connect(url(ws_server, "/abort"), ca_file=str(certs["cert"]))
        first = ws.recv().text()
        with pytest.raises(ConnectionClosed) as info:
            ws.recv()
        return first, info.value.code

    assert run(main, backend=backend) == ("aborting", 1006)


def test_silent_server_hits_recv_timeout(ws_server, certs):
    def main():
        ws = websocket.connect(url(ws_server, "/silent"), ca_file=str(certs["cert"]),
                               recv_timeout_s=0.3)
        with pytest.raises(NetTimeout):
            ws.recv()
        ws.close(timeout_s=0.5)
        return ws.closed

    assert run(main)


def test_many_messages_in_order(ws_server, certs, backend):
    def main():
        ws = websocket.connect(url(ws_server, "/stream"), ca_file=str(certs["cert"]))
        got = [ws.recv().text() for _ in range(1000)]
        ws.close()
        return got

    got = run(main, backend=backend)
    assert got == ['{"stream":"btcusdt@depth","data":{"u":%d}}' % i for i in range(1000)]


def test_plain_ws(ws_server_plain, backend):
    def main():
        ws = websocket.connect(url(ws_server_plain, "/echo"))
        ws.send_text("plain")
        text = ws.recv().text()
        ws.close()
        return text

    assert run(main, backend=backend) == "plain"


def test_certificate_checks(certs):
    server = WsServer(server_ssl_context(certs), None).start()
    try:
        def untrusted():
            with pytest.raises(TlsError, match="certificate verification failed"):
                websocket.connect(f"wss://127.0.0.1:{server.port}/echo",
                                  ca_file=str(certs["untrusted_cert"]))
            with pytest.raises(TlsError, match="certificate verification failed"):
                websocket.connect(f"wss://127.0.0.1:{server.port}/echo")  # system store only
            return True

        assert run(untrusted)
    finally:
        server.stop()


def test_refused_and_http_errors(https_server, certs):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]

    def main():
        with pytest.raises(ConnectError, match="cannot connect"):
            websocket.connect(f"ws://127.0.0.1:{free_port}/")
        with pytest.raises(HttpError) as info:  # an HTTPS server that does not upgrade
            websocket.connect(f"wss://127.0.0.1:{https_server.port}/429",
                              ca_file=str(certs["cert"]))
        return info.value.status, info.value.headers.get("retry-after")

    assert run(main) == (429, "17")


def test_close_from_another_fiber_while_recv_waits(ws_server, certs, backend):
    def main():
        ws = websocket.connect(url(ws_server, "/silent"), ca_file=str(certs["cert"]))
        outcome = {}

        def reader():
            try:
                ws.recv()
            except ConnectionClosed as exc:
                outcome["code"] = exc.code

        fiber = loom.current_fiber().loop.spawn(reader)
        loom.sleep(0.05)  # let the reader park in recv()
        ws.close(1001, "shutting down", timeout_s=5)
        fiber.join(5)
        return outcome.get("code"), ws.closed

    assert run(main, backend=backend) == (1001, True)


def test_cancelled_recv_then_close(ws_server, certs, backend):
    """The session driver's reconnect: cancel the fiber parked in recv(), which then closes."""
    def main():
        ws = websocket.connect(url(ws_server, "/echo"), ca_file=str(certs["cert"]))
        outcome = {}

        def reader():
            try:
                ws.recv()
            except loom.Cancelled:
                outcome["cancelled"] = True
                ws.close(timeout_s=2)
                outcome["code"] = ws.close_code

        fiber = loom.current_fiber().loop.spawn(reader)
        loom.sleep(0.05)
        fiber.cancel()
        fiber.join(5)
        return outcome, ws.closed

    assert run(main, backend=backend) == ({"cancelled": True, "code": 1000}, True)
