"""Seeded fuzzing of the sans-IO parsers: random and mutated bytes give events or
ProtocolError, never another exception, whatever the chunking."""

from __future__ import annotations

import random
import zlib

from observer.net.errors import ProtocolError
from observer.net.httpparse import ResponseParser
from observer.net.wsframe import FrameReader

SEED = 20261122


def ws_corpus(rng: random.Random) -> list[bytes]:
    comp = zlib.compressobj(wbits=-15)
    deflated = comp.compress(b"hello " * 20) + comp.flush(zlib.Z_SYNC_FLUSH)
    frames = [b"\x81\x05hello", b"\x82\x7e\x01\x00" + bytes(256), b"\x89\x02hi", b"\x8a\x00",
              b"\x01\x02he\x80\x03llo", b"\x88\x02\x03\xe8", b"\xc1" + bytes((len(deflated) - 4,))
              + deflated[:-4], b"\x82\x7f" + (70000).to_bytes(8, "big") + bytes(70000)]
    return [b"".join(rng.sample(frames, rng.randint(1, len(frames)))) for _ in range(40)]


def mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        pos = rng.randrange(len(data))
        choice = rng.random()
        if choice < 0.6:
            data[pos] ^= 1 << rng.randrange(8)
        elif choice < 0.8:
            del data[pos:pos + rng.randint(1, 8)]
        else:
            data[pos:pos] = rng.randbytes(rng.randint(1, 8))
        if not data:
            data = bytearray(b"\x00")
    return bytes(data)


def feed_ws(data: bytes, rng: random.Random, deflate: bool) -> None:
    reader = FrameReader(recv_bytes_max=64 * 1024, message_bytes_max=100_000, deflate=deflate)
    pos = 0
    try:
        while pos < len(data):
            window = reader.recv_window()
            n = min(len(window), rng.randint(1, 5000), len(data) - pos)
            window[:n] = data[pos:pos + n]
            reader.received(n)
            pos += n
            while reader.next_event() is not None:
                pass
    except ProtocolError:
        pass


def test_frame_reader_random_and_mutated_bytes():
    rng = random.Random(SEED)
    corpus = ws_corpus(rng)
    for i in range(1500):
        if i % 3 == 0:
            data = rng.randbytes(rng.randint(1, 3000))
        else:
            data = mutate(rng, rng.choice(corpus))
        feed_ws(data, rng, deflate=bool(i % 2))


HTTP_CORPUS = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 25\r\n\r\n"
    + b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03\xcbH\xcd\xc9\xc9\x07\x00\x86\xa6\x106\x05\x00"
    b"\x00\x00",
]


def test_response_parser_random_and_mutated_bytes():
    rng = random.Random(SEED + 1)
    for i in range(2000):
        data = rng.randbytes(rng.randint(1, 400)) if i % 4 == 0 else mutate(
            rng, rng.choice(HTTP_CORPUS))
        parser = ResponseParser(body_bytes_max=10_000, head_bytes_max=2048)
        try:
            pos = 0
            while pos < len(data) and parser.response is None:
                n = rng.randint(1, 64)
                parser.feed(data[pos:pos + n])
                pos += n
            if parser.response is None:
                parser.feed_eof()
            assert parser.response is not None
        except ProtocolError:
            pass


def test_handshake_reply_mutated():
    from observer.net.errors import HttpError
    from observer.net.wshandshake import Handshake, accept_for, parse_url

    rng = random.Random(SEED + 2)
    for _ in range(1500):
        hs = Handshake(parse_url("wss://h/x"))
        reply = (f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade"
                 f"\r\nSec-WebSocket-Accept: {accept_for(hs.key)}\r\nSec-WebSocket-Extensions: "
                 f"permessage-deflate; server_max_window_bits=12\r\n\r\n").encode()
        data = mutate(rng, reply)
        try:
            if hs.receive_data(data):
                hs.check()
        except (ProtocolError, HttpError):
            pass
