"""Sans-IO HTTP/1.1 response parsing and the WebSocket opening handshake, without sockets."""

from __future__ import annotations

import gzip
import zlib

import pytest

from observer.net.errors import HttpError, ProtocolError
from observer.net.httpparse import ResponseParser, parse_head
from observer.net.wshandshake import (
    DeflateParams,
    Handshake,
    accept_for,
    parse_deflate_params,
    parse_url,
)


def parse_all(data: bytes, chunk: int, **kwargs):
    parser = ResponseParser(**kwargs)
    response = None
    for i in range(0, len(data), chunk):
        response = parser.feed(data[i:i + chunk])
    return parser, response


def chunked(body: bytes, sizes=(1, 5, 100)) -> bytes:
    out = b""
    pos = 0
    i = 0
    while pos < len(body):
        n = sizes[i % len(sizes)]
        part = body[pos:pos + n]
        out += f"{len(part):x}".encode() + (b";ext=1" if i == 1 else b"") + b"\r\n" + part + b"\r\n"
        pos += n
        i += 1
    return out + b"0\r\n\r\n"


BODY = b'{"lastUpdateId":1027024,"bids":[["4.00000000","431.00000000"]],"asks":[]}' * 20

CASES = {
    "content-length": (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nContent-Type: application/json"
                       b"\r\n\r\n" % len(BODY) + BODY, 200, BODY, True),
    "chunked": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(BODY),
                200, BODY, True),
    "chunked-trailers": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         + chunked(BODY)[:-2] + b"X-Trailer: 1\r\n\r\n", 200, BODY, True),
    "gzip": (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n"
             % len(gzip.compress(BODY)) + gzip.compress(BODY), 200, BODY, True),
    "gzip-chunked": (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked"
                     b"\r\n\r\n" + chunked(gzip.compress(BODY), (7, 300)), 200, BODY, True),
    "deflate": (b"HTTP/1.1 200 OK\r\nContent-Encoding: deflate\r\nContent-Length: %d\r\n\r\n"
                % len(zlib.compress(BODY)) + zlib.compress(BODY), 200, BODY, True),
    "429": (b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Length: 2\r\n\r\n{}",
            429, b"{}", True),
    "418": (b"HTTP/1.1 418 I'm a teapot\r\nRetry-After: 120\r\nContent-Length: 0\r\n\r\n",
            418, b"", True),
    "204": (b"HTTP/1.1 204 No Content\r\n\r\n", 204, b"", True),
    "100-continue": (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n"
                     b"abc", 200, b"abc", True),
    "connection-close": (b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx",
                         200, b"x", False),
    "http10": (b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", 200, b"x", False),
    "http10-keepalive": (b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1"
                         b"\r\n\r\nx", 200, b"x", True),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_responses_fed_whole_bytewise_and_with_trailing(name):
    data, status, body, keep_alive = CASES[name]
    for chunk in (len(data), 1, 13):
        parser, response = parse_all(data, chunk)
        assert response is not None, chunk
        assert (response.status, response.body) == (status, body)
        assert parser.keep_alive is keep_alive
        assert parser.leftover == b""
    parser, response = parse_all(data + b"HTTP/1.1 200", len(data) + 12)
    assert response.body == body
    assert parser.leftover == b"HTTP/1.1 200"
    assert parser.keep_alive is False  # unsolicited bytes: never reuse this connection


def test_retry_after_and_headers_intact():
    _, response = parse_all(CASES["429"][0], 1)
    assert response.retry_after_s == 7.0
    assert response.reason == "Too Many Requests"
    assert response.headers["retry-after"] == "7"
    _, teapot = parse_all(CASES["418"][0], 5)
    assert teapot.retry_after_s == 120.0 and teapot.reason == "I'm a teapot"


def test_repeated_headers_are_joined_and_case_folded():
    head = parse_head(b"HTTP/1.1 200 OK\r\nX-A: 1\r\nx-a: 2\r\nX-MBX-USED-WEIGHT-1M: 25\r\n\r\n")
    assert head.headers == {"x-a": "1, 2", "x-mbx-used-weight-1m": "25"}
    assert head.raw_headers[0] == ("X-A", "1")


def test_close_delimited_body():
    parser = ResponseParser()
    assert parser.feed(b"HTTP/1.1 200 OK\r\n\r\npart one, ") is None
    assert parser.feed(b"part two") is None
    response = parser.feed_eof()
    assert response.body == b"part one, part two"
    assert parser.keep_alive is False


BAD = {
    "garbage": b"SSH-2.0-OpenSSH\r\n\r\n",
    "bad-status": b"HTTP/1.1 2x0 OK\r\n\r\n",
    "header-space": b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
    "header-fold": b"HTTP/1.1 200 OK\r\nX: a\r\n continued\r\n\r\n",
    "no-colon": b"HTTP/1.1 200 OK\r\nnocolon\r\n\r\n",
    "length-bad": b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    "length-conflict": b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx",
    "chunk-size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    "chunk-size-0x": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n",
    "chunk-crlf": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nxyz",
    "transfer-gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    "encoding-br": b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 1\r\n\r\nx",
    "corrupt-gzip": b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\nnope",
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_malformed_responses_raise_protocol_error(name):
    for chunk in (len(BAD[name]), 1):
        with pytest.raises(ProtocolError):
            parse_all(BAD[name], chunk)


def test_limits():
    with pytest.raises(ProtocolError, match="head_bytes_max"):
        parse_all(b"HTTP/1.1 200 OK\r\nX: " + b"a" * 5000, 100, head_bytes_max=4096)
    with pytest.raises(ProtocolError, match="headers_max"):
        parse_all(b"HTTP/1.1 200 OK\r\n" + b"X: 1\r\n" * 11 + b"\r\n", 1000, headers_max=10)
    with pytest.raises(ProtocolError, match="body_bytes_max"):
        parse_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n", 100, body_bytes_max=1000)
    with pytest.raises(ProtocolError, match="body_bytes_max"):
        parse_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(b"x" * 2000),
                  100, body_bytes_max=1000)
    bomb = gzip.compress(b"\x00" * 10_000_000)  # about 10 KB on the wire
    with pytest.raises(ProtocolError, match="body_bytes_max"):
        parse_all(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n"
                  % len(bomb) + bomb, 4096, body_bytes_max=1_000_000)


def test_truncated_responses_raise_on_eof():
    for data in (b"", b"HTTP/1.1 200 OK\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",
                 b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab"):
        parser = ResponseParser()
        parser.feed(data)
        with pytest.raises(ProtocolError):
            parser.feed_eof()


# -- the WebSocket opening handshake ------------------------------------------------------------

def reply(key: str, *, status: str = "101 Switching Protocols", extra: str = "",
          accept: str | None = None) -> bytes:
    return (f"HTTP/1.1 {status}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Accept: {accept or accept_for(key)}\r\n{extra}\r\n").encode()


def test_rfc6455_accept_example():
    assert accept_for("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_url_parsing():
    t = parse_url("wss://stream.binance.com:9443/stream?streams=btcusdt@depth@100ms")
    assert (t.secure, t.host, t.port, t.resource) == (True, "stream.binance.com", 9443,
                                                      "/stream?streams=btcusdt@depth@100ms")
    assert t.host_header == "stream.binance.com:9443"
    assert parse_url("ws://127.0.0.1").resource == "/"
    assert parse_url("wss://h/x").host_header == "h"
    with pytest.raises(ValueError):
        parse_url("https://example.com/")


def test_handshake_request_and_ok_reply_bytewise_with_leftover():
    hs = Handshake(parse_url("wss://h.example:8443/ws/v5/public"), headers={"X-Test": "1"})
    request = hs.request().decode()
    assert request.startswith("GET /ws/v5/public HTTP/1.1\r\nHost: h.example:8443\r\n")
    assert f"Sec-WebSocket-Key: {hs.key}\r\n" in request
    assert "Sec-WebSocket-Version: 13\r\n" in request
    assert "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" in request
    assert request.endswith("X-Test: 1\r\n\r\n")
    data = reply(hs.key, extra="Sec-WebSocket-Extensions: permessage-deflate; "
                               "server_no_context_takeover\r\n") + b"\x81\x02hi"
    done = [hs.receive_data(data[i:i + 1]) for i in range(len(data))]
    assert done.index(True) == len(data) - 5
    head, deflate = hs.check()
    assert head.status == 101
    assert deflate == DeflateParams(server_no_context_takeover=True)
    assert hs.leftover == b"\x81\x02hi"


def test_handshake_failures():
    hs = Handshake(parse_url("ws://h/"))
    hs.receive_data(reply(hs.key, accept="AAAAAAAAAAAAAAAAAAAAAAAAAAA="))
    with pytest.raises(ProtocolError, match="Accept"):
        hs.check()
    hs = Handshake(parse_url("ws://h/"))
    hs.receive_data(b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 30\r\n\r\n")
    with pytest.raises(HttpError) as info:
        hs.check()
    assert info.value.status == 429 and info.value.headers["retry-after"] == "30"
    hs = Handshake(parse_url("ws://h/"), compression=False)
    hs.receive_data(reply(hs.key, extra="Sec-WebSocket-Extensions: permessage-deflate\r\n"))
    with pytest.raises(ProtocolError, match="did not offer"):
        hs.check()
    hs = Handshake(parse_url("ws://h/"))
    hs.receive_data(reply(hs.key).replace(b"Upgrade: websocket", b"Upgrade: h2c"))
    with pytest.raises(ProtocolError, match="Upgrade"):
        hs.check()
    hs = Handshake(parse_url("ws://h/"), head_bytes_max=100)
    with pytest.raises(ProtocolError, match="head_bytes_max"):
        hs.receive_data(b"HTTP/1.1 101 OK\r\n" + b"X: y\r\n" * 50)


def test_deflate_params():
    assert parse_deflate_params("permessage-deflate; client_max_window_bits=10; "
                                "server_max_window_bits=12") == DeflateParams(
        server_max_window_bits=12, client_max_window_bits=10)
    for bad in ("x-webkit-deflate-frame", "permessage-deflate; server_max_window_bits=7",
                "permessage-deflate; foo", "permessage-deflate; server_no_context_takeover=1",
                "permessage-deflate; client_no_context_takeover; client_no_context_takeover"):
        with pytest.raises(ProtocolError):
            parse_deflate_params(bad)
