"""obsim's Kraken v2 venue, checked by an independent client (book, checksum, limits, faults)."""

from __future__ import annotations

import asyncio
import json
import zlib

import pytest
from websockets.exceptions import ConnectionClosed

from obsim.harness import Obsim

from .simkit import LittleBook, open_ws, raw_json, recordings_dir, recv_json, run, to_thread

ARGS = ["--exchanges", "kraken", "--rate", "150", "--depth", "40", "--kraken-heartbeat-s", "0.2"]


@pytest.fixture(scope="module")
def sim():
    with Obsim(ARGS) as sim:
        yield sim


def checksum_text(text: str) -> str:
    return text.replace(".", "").lstrip("0")


def kraken_crc(book: LittleBook) -> int:
    asks = "".join(checksum_text(p) + checksum_text(q) for p, q in book.top("ask", 10))
    bids = "".join(checksum_text(p) + checksum_text(q) for p, q in book.top("bid", 10))
    return zlib.crc32((asks + bids).encode())


class KrakenClient:
    """Applies book messages in wire order, truncates to depth, verifies every checksum."""

    def __init__(self, depth: int) -> None:
        self.book = LittleBook(depth)
        self.messages = 0
        self.mismatches = 0
        self.repeated_prices = 0
        self.pushed_out = 0
        self.qty_texts: list[str] = []

    def on_book(self, msg: dict) -> None:
        data = msg["data"][0]
        if msg["type"] == "snapshot":
            self.book.clear()
        for side, key in (("bid", "bids"), ("ask", "asks")):
            prices = [lv["price"] for lv in data[key]]
            self.repeated_prices += len(prices) - len(set(prices))
            for level in data[key]:
                self.book.set(side, level["price"], level["qty"])
                self.qty_texts.append(level["qty"])
        if any(len(self.book.sides[s]) > self.book.depth for s in ("bid", "ask")):
            self.pushed_out += 1                       # a level left the window without a delete
        self.book.truncate()
        self.messages += 1
        if kraken_crc(self.book) != int(data["checksum"]):
            self.mismatches += 1


async def subscribe(ws, symbols, depth=10, req_id=1):
    await ws.send(json.dumps({"method": "subscribe", "params": {"channel": "book", "symbol": symbols,
                                                                "depth": depth}, "req_id": req_id}))


GAP_ROUNDS_MAX = 20
MESSAGES_PER_ROUND = 50     # after a gap's lost changes, this many messages show it or not


async def follow(ws, client: KrakenClient, until) -> None:
    while not until():
        msg = raw_json(await asyncio.wait_for(ws.recv(), 10))
        if msg.get("channel") == "book":
            client.on_book(msg)


async def settle_and_compare(sim, ws, client: KrakenClient, symbol: str, depth: int) -> None:
    """Pause, drain up to the pong of a ping sent after the pause (it is queued behind every
    update rendered before the pause), compare with the true book."""
    await to_thread(sim.pause, "kraken")
    try:
        await ws.send(json.dumps({"method": "ping", "req_id": 99}))
        while True:
            msg = raw_json(await asyncio.wait_for(ws.recv(), 10))
            if msg.get("method") == "pong":
                break
            if msg.get("channel") == "book":
                client.on_book(msg)
        true = await to_thread(sim.book, "kraken", symbol, depth)
    finally:
        await to_thread(sim.resume, "kraken")
    assert client.book.top("bid") == true["bids"]
    assert client.book.top("ask") == true["asks"]


def test_book_checksums_and_window_rules(sim):
    async def scenario():
        client = KrakenClient(10)
        async with await open_ws(sim, sim.ws_url("kraken")) as ws:
            assert (await recv_json(ws))["channel"] == "status"
            await subscribe(ws, ["BTC/USD"])
            ack = await recv_json(ws)
            assert ack["success"] is True and ack["result"]["symbol"] == "BTC/USD" and ack["req_id"] == 1
            await follow(ws, client, lambda: client.messages >= 400)
            await settle_and_compare(sim, ws, client, "BTC/USD", 10)
        assert client.mismatches == 0
        assert client.repeated_prices > 0               # one price twice in one message
        assert client.pushed_out > 0                    # levels left the window without deletes
        assert all(len(q.partition(".")[2]) == 8 for q in client.qty_texts)   # full precision
        assert any(q.endswith("0") for q in client.qty_texts)                 # trailing zeros kept
    run(scenario())


def test_acks_per_symbol_and_duplicate_subscribe_refused(sim):
    async def scenario():
        async with await open_ws(sim, sim.ws_url("kraken")) as ws:
            await recv_json(ws)
            await subscribe(ws, ["BTC/USD", "ETH/USD"], depth=25)
            acks = []
            while len(acks) < 2:
                msg = await recv_json(ws)
                if msg.get("method") == "subscribe":
                    acks.append(msg["result"]["symbol"])
            assert acks == ["BTC/USD", "ETH/USD"]
            await subscribe(ws, ["BTC/USD"], depth=25, req_id=2)
            while (msg := await recv_json(ws)).get("method") != "subscribe":
                pass
            assert msg["success"] is False and msg["error"] == "Already subscribed"
            await ws.send(json.dumps({"method": "unsubscribe", "params": {"channel": "book",
                                      "symbol": ["BTC/USD"], "depth": 25}, "req_id": 3}))
            while (msg := await recv_json(ws)).get("method") != "unsubscribe":
                pass
            assert msg["success"] is True
            await subscribe(ws, ["BTC/USD"], depth=25, req_id=4)
            while not ((msg := await recv_json(ws)).get("type") == "snapshot"
                       and msg["data"][0]["symbol"] == "BTC/USD"):
                pass
            assert 0 < len(msg["data"][0]["bids"]) <= 25
            await subscribe(ws, ["NOPE/USD"], req_id=5)
            while (msg := await recv_json(ws)).get("req_id") != 5:
                pass
            assert msg["success"] is False
        counters = await to_thread(sim.counters, "kraken")
        assert counters["subscribes_refused"] >= 1
    run(scenario())


def test_heartbeat_and_app_ping_and_ping_deadline(sim):
    async def scenario():
        async with await open_ws(sim, sim.ws_url("kraken")) as ws:
            await subscribe(ws, ["ETH/USD"])
            await to_thread(sim.pause, "kraken")
            try:
                while (await recv_json(ws)).get("channel") != "heartbeat":
                    pass
                await ws.send(json.dumps({"method": "ping", "req_id": 42}))
                while (msg := await recv_json(ws)).get("method") != "pong":
                    pass
                assert msg["req_id"] == 42 and "time_in" in msg
                await to_thread(sim.fault, "kraken", "ping_deadline", duration_s=30)
                await ws.send(json.dumps({"method": "ping", "req_id": 43}))
                heartbeats = 0
                while heartbeats < 3:                      # well inside the 30 s mute
                    msg = await recv_json(ws)
                    assert msg.get("method") != "pong"
                    heartbeats += msg.get("channel") == "heartbeat"
            finally:
                await to_thread(sim.resume, "kraken")
    run(scenario())


@pytest.mark.parametrize("kind", ["bad_checksum", "gap"])
def test_checksum_breaks_on_bad_checksum_and_on_gap(sim, kind):
    async def scenario():
        client = KrakenClient(10)
        async with await open_ws(sim, sim.ws_url("kraken")) as ws:
            await subscribe(ws, ["BTC/USD"])
            await follow(ws, client, lambda: client.messages >= 20)
            assert client.mismatches == 0
            # A lost change outside the checksummed top 10 cannot break it (Kraken has no
            # sequence numbers): gaps are injected in rounds until one lands in the top 10.
            for _ in range(GAP_ROUNDS_MAX if kind == "gap" else 1):
                await to_thread(sim.fault, "kraken", kind, symbol="BTC/USD",
                                count=1 if kind == "bad_checksum" else 3)
                seen = client.messages
                await follow(ws, client, lambda: client.mismatches > 0
                             or client.messages >= seen + MESSAGES_PER_ROUND)
                if client.mismatches:
                    break
            assert client.mismatches > 0, f"{kind}: the checksum never broke"
            if kind == "bad_checksum":                # the book is right: later messages verify
                seen = client.messages
                await follow(ws, client, lambda: client.messages >= seen + 20)
                assert client.mismatches == 1
    run(scenario())


def test_oversized_snapshot_and_a_client_frame_limit(sim):
    async def scenario():
        await to_thread(sim.fault, "kraken", "oversized_snapshot", size_bytes=2_000_000)
        async with await open_ws(sim, sim.ws_url("kraken"), ) as ws:
            await subscribe(ws, ["ETH/USD"])
            while (msg := await asyncio.wait_for(ws.recv(), 10)) and '"snapshot"' not in msg[:40]:
                pass
            assert len(msg) == 2_000_000 and json.loads(msg)["type"] == "snapshot"
        await to_thread(sim.fault, "kraken", "oversized_snapshot", size_bytes=2_000_000)
        from websockets.asyncio.client import connect
        async with connect(sim.ws_url("kraken"), ssl=sim.ssl_context(), max_size=1 << 20) as ws:
            await subscribe(ws, ["ETH/USD"])
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.sent.code == 1009          # the client refused the big frame
    run(scenario())


def test_disconnect_and_stall_and_garbage(sim):
    async def scenario():
        async with await open_ws(sim, sim.ws_url("kraken")) as ws:
            await subscribe(ws, ["BTC/USD"])
            await recv_json(ws)
            await to_thread(sim.fault, "kraken", "garbage")
            while True:
                text = await asyncio.wait_for(ws.recv(), 10)
                if text.startswith('{"garbage"'):
                    break
            await to_thread(sim.fault, "kraken", "stall", duration_s=0.6)
            await to_thread(sim.fault, "kraken", "disconnect")
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            assert closed.value.rcvd is None
    run(scenario())


def test_replay_of_the_v1_recording_served_as_v2():
    recordings = recordings_dir()
    with Obsim(["--exchanges", "kraken", "--source", "replay", "--recordings", str(recordings),
                "--rate", "200", "--depth", "1000", "--kraken-heartbeat-s", "0.2", "--start-paused"]) as sim:
        assert "BTC/CHF" in sim.info["exchanges"]["kraken"]["symbols"]     # XBT renamed
        async def scenario():
            client = KrakenClient(100)
            async with await open_ws(sim, sim.ws_url("kraken")) as ws:
                await subscribe(ws, ["XMR/USD"], depth=100)
                await to_thread(sim.resume, "kraken")
                await follow(ws, client, lambda: client.messages >= 200)
                await settle_and_compare(sim, ws, client, "XMR/USD", 100)
            assert client.mismatches == 0
        run(scenario())
