"""HttpClient on loom against a real TLS `http.server`: JSON, chunked, gzip, keep-alive reuse,
429/418 returned intact, body limit, timeouts; and tcp/tls failures with clear errors."""

from __future__ import annotations

import socket
import threading

import pytest

from netpeers import SNAPSHOT, run
from observer import loom
from observer.net import tcp, tls
from observer.net.errors import (
    ConnectError,
    DnsError,
    NetTimeout,
    ProtocolError,
    TlsError,
)
from observer.net.http import HttpClient




def client_for(server, certs, **kwargs):
    return HttpClient(f"https://127.0.0.1:{server.port}", ca_file=str(certs["cert"]), **kwargs)


def test_json_chunked_gzip_over_one_keepalive_connection(https_server, certs, backend):
    def main():
        client = client_for(https_server, certs)
        replies = [client.get("/json?symbol=BTCUSDT&limit=1000"), client.get("/chunked"),
                   client.get("/gzip"), client.get("/json", headers={"X-Extra": "1"})]
        client.close()
        return [(r.status, r.body) for r in replies], client.connections_made

    replies, connections = run(main, backend=backend)
    assert replies == [(200, SNAPSHOT)] * 4
    assert connections == 1
    paths = [r[0] for r in https_server.requests]
    assert paths == ["/json?symbol=BTCUSDT&limit=1000", "/chunked", "/gzip", "/json"]
    assert len({r[2] for r in https_server.requests}) == 1  # one server-side connection
    assert https_server.requests[3][1]["X-Extra"] == "1"
    assert "gzip" in https_server.requests[0][1]["Accept-Encoding"]


def test_429_and_418_reach_the_caller_intact(https_server, certs, backend):
    def main():
        client = client_for(https_server, certs)
        replies = client.get("/429"), client.get("/418"), client.get("/json")
        client.close()
        return replies

    too_many, teapot, ok = run(main, backend=backend)
    assert (too_many.status, too_many.reason, too_many.retry_after_s) == (429, "Too Many Requests",
                                                                          17.0)
    assert too_many.body == b'{"code":-1003}'
    assert (teapot.status, teapot.headers["retry-after"]) == (418, "120")
    assert ok.status == 200


def test_connection_close_then_new_connection(https_server, certs):
    def main():
        client = client_for(https_server, certs)
        first = client.get("/close").body
        second = client.get("/json").status
        client.close()
        return first, second, client.connections_made

    assert run(main) == (b"bye", 200, 2)


def test_stale_keepalive_connection_is_retried_once(https_server, certs, backend):
    def main():
        client = client_for(https_server, certs)
        client.get("/json")
        client._stream.stream.sock.shutdown(socket.SHUT_RDWR)  # the idle connection dies
        status = client.get("/json").status
        client.close()
        return status, client.connections_made

    assert run(main, backend=backend) == (200, 2)


def test_body_limit(https_server, certs):
    def main():
        client = client_for(https_server, certs, body_bytes_max=1_000_000)
        with pytest.raises(ProtocolError, match="body_bytes_max"):
            client.get("/big")
        client.close()
        client = client_for(https_server, certs)
        big = client.get("/big")
        client.close()
        return len(big.body)

    assert run(main) == 3_000_000


def test_request_timeout(https_server, certs):
    def main():
        client = client_for(https_server, certs, timeout_s=0.3)
        with pytest.raises(NetTimeout):
            client.get("/stall")
        return True

    assert run(main)


def test_plain_http(https_server, certs):
    from netpeers import HttpsServer

    server = HttpsServer(None).start()
    try:
        def main():
            client = HttpClient(f"http://127.0.0.1:{server.port}/")
            reply = client.get("json")
            client.close()
            return reply.status, reply.body

        assert run(main) == (200, SNAPSHOT)
    finally:
        server.stop()


def test_tls_verification_failures(https_server, certs):
    def main():
        with pytest.raises(TlsError, match="certificate verification failed"):
            HttpClient(f"https://127.0.0.1:{https_server.port}",
                       ca_file=str(certs["untrusted_cert"])).get("/json")
        with pytest.raises(TlsError, match="certificate verification failed"):
            # Trusted certificate, wrong name: it is issued for localhost and 127.0.0.1 only.
            s = tls.connect("127.0.0.1", https_server.port,
                            context=_context_for_name(certs), timeout_s=5)
            s.close()
        with pytest.raises(TlsError, match="CA file"):
            tls.make_context(ca_file="/nonexistent/ca.pem")
        return True

    assert run(main)


def _context_for_name(certs):
    ctx = tls.make_context(ca_file=str(certs["cert"]))
    wrap = ctx.wrap_bio

    def wrap_with_other_name(incoming, outgoing, server_hostname=None, **kwargs):
        return wrap(incoming, outgoing, server_hostname="wrong.example", **kwargs)

    ctx.wrap_bio = wrap_with_other_name
    return ctx


def test_tcp_failures_are_clear():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    try:
        def main():
            with pytest.raises(ConnectError, match="refused"):
                tcp.connect("127.0.0.1", free_port, timeout_s=5)
            with pytest.raises(DnsError):
                tcp.connect("no-such-host.invalid", 80, timeout_s=5)
            with pytest.raises(DnsError):
                tcp.connect("x" * 70 + ".example", 80, timeout_s=5)  # a label over 63 bytes
            stream = tcp.connect("localhost", silent.getsockname()[1], timeout_s=5,
                                 read_timeout_s=0.2)
            assert stream.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            with pytest.raises(NetTimeout):
                stream.recv_into(memoryview(bytearray(10)))
            stream.close()
            return True

        assert run(main)
    finally:
        silent.close()


def test_tls_handshake_with_a_non_tls_server_fails_clearly():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)

    def garbage_server():
        conn, _ = listener.accept()
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        conn.close()

    thread = threading.Thread(target=garbage_server, daemon=True)
    thread.start()
    try:
        def main():
            with pytest.raises(TlsError):
                tls.connect("127.0.0.1", listener.getsockname()[1], timeout_s=5)
            return True

        assert run(main)
    finally:
        thread.join(20)
        listener.close()
        assert not thread.is_alive(), "the garbage server thread did not end"


def test_concurrent_gets_from_two_fibers(https_server, certs, backend):
    def main():
        client = client_for(https_server, certs)
        bodies = {}

        def fetch(path):
            bodies[path] = client.get(path).body

        loop = loom.current_fiber().loop
        fibers = [loop.spawn(fetch, p) for p in ("/json", "/gzip", "/chunked", "/big")]
        for fiber in fibers:
            fiber.join(20)
        client.close()
        return bodies

    bodies = run(main, backend=backend)
    assert bodies == {"/json": SNAPSHOT, "/gzip": SNAPSHOT, "/chunked": SNAPSHOT,
                      "/big": b"b" * 3_000_000}


def test_replaced_ca_file_at_the_same_path_is_reloaded(https_server, certs, tmp_path):
    import shutil

    ca_file = tmp_path / "ca.pem"
    shutil.copy(certs["untrusted_cert"], ca_file)

    def main():
        with pytest.raises(TlsError):
            HttpClient(f"https://127.0.0.1:{https_server.port}", ca_file=str(ca_file)).get("/json")
        shutil.copy(certs["cert"], ca_file)  # the simulator restarted with a new certificate
        client = HttpClient(f"https://127.0.0.1:{https_server.port}", ca_file=str(ca_file))
        status = client.get("/json").status
        client.close()
        return status

    assert run(main) == 200


def test_connect_timeout_when_the_listener_backlog_is_full(backend):
    """A full accept queue drops SYNs, so connect() never completes: NetTimeout, not a hang."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    fillers = []
    try:
        for _ in range(3):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(listener.getsockname())
            fillers.append(filler)

        def main():
            with pytest.raises(NetTimeout, match="timed out"):
                tcp.connect("127.0.0.1", listener.getsockname()[1], timeout_s=0.3)
            return True

        assert run(main, backend=backend)
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def test_sni_is_sent_for_names_not_for_ip_literals(certs):
    from netpeers import HttpsServer, server_ssl_context

    seen = []
    ctx = server_ssl_context(certs)
    ctx.sni_callback = lambda sslobj, name, context: seen.append(name)
    server = HttpsServer(ctx).start()
    try:
        def main():
            for host in ("localhost", "127.0.0.1"):
                client = HttpClient(f"https://{host}:{server.port}", ca_file=str(certs["cert"]))
                assert client.get("/json").status == 200
                client.close()
            return True

        assert run(main)
    finally:
        server.stop()
    assert seen == ["localhost", None]
