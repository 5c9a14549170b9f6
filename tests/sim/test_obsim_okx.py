"""obsim's OKX venue (`books`), checked by an independent client."""

from __future__ import annotations

import asyncio
import json
import zlib

import pytest
from websockets.exceptions import ConnectionClosed

from obsim.harness import Obsim

from .simkit import LittleBook, open_ws, recordings_dir, recv_json, run, to_thread

ARGS = ["--exchanges", "okx", "--rate", "150", "--okx-checksum", "legacy", "--okx-idle-s", "1.5", "--okx-connects-max", "0",
        "--okx-keepalive-s", "3"]


@pytest.fixture(scope="module")
def sim():
    with Obsim(ARGS) as sim:
        yield sim


def okx_crc(book: LittleBook) -> int:
    bids, asks = book.top("bid", 25), book.top("ask", 25)
    parts = []
    for rank in range(max(len(bids), len(asks))):
        for levels in (bids, asks):
            if rank < len(levels):
                parts += levels[rank]
    crc = zlib.crc32(":".join(parts).encode())
    return crc - (1 << 32) if crc >= 1 << 31 else crc


class OkxClient:
    def __init__(self) -> None:
        self.book = LittleBook()
        self.seq: int | None = None
        self.gaps = self.resets = self.keepalives = self.mismatches = self.jumps = self.updates = 0
        self.checksums: list[int] = []

    def on_books(self, msg: dict) -> None:
        data = msg["data"][0]
        if msg["action"] == "snapshot":
            assert data["prevSeqId"] == -1
            self.book.clear()
        elif data["prevSeqId"] != self.seq:
            self.gaps += 1
        else:
            self.updates += 1
            self.keepalives += data["seqId"] == data["prevSeqId"] and not data["bids"] and not data["asks"]
            self.resets += data["seqId"] < data["prevSeqId"]
            self.jumps += data["seqId"] > data["prevSeqId"] + 1
        self.seq = data["seqId"]
        for side, key in (("bid", "bids"), ("ask", "asks")):
            for price, size, _, _orders in data[key]:
                self.book.set(side, price, size)
        self.checksums.append(data["checksum"])
        if data["checksum"] != 0 and okx_crc(self.book) != data["checksum"]:
            self.mismatches += 1


async def subscribe(ws, inst: str, op: str = "subscribe", req_id: str = "1"):
    await ws.send(json.dumps({"id": req_id, "op": op, "args": [{"channel": "books", "instId": inst}]}))


async def read(ws, client: OkxClient, until, timeout_s: float = 10.0):
    while not until():
        text = await asyncio.wait_for(ws.recv(), timeout_s)
        msg = json.loads(text)
        if msg.get("arg", {}).get("channel") == "books" and "data" in msg:
            client.on_books(msg)


def test_books_chain_checksums_and_true_book(sim):
    async def scenario():
        client = OkxClient()
        async with await open_ws(sim, sim.ws_url("okx")) as ws:
            await subscribe(ws, "BTC-USDT")
            ack = await recv_json(ws)
            assert ack["event"] == "subscribe" and ack["arg"] == {"channel": "books", "instId": "BTC-USDT"}
            assert ack["id"] == "1" and "connId" in ack
            await read(ws, client, lambda: client.updates >= 300)
            await to_thread(sim.pause, "okx")
            try:
                true = await to_thread(sim.book, "okx", "BTC-USDT", 400)
                await read(ws, client, lambda: client.seq == true["sequence"])
                kept = client.keepalives
                await to_thread(sim.fault, "okx", "keepalive")
                await read(ws, client, lambda: client.keepalives > kept)      # empty update, same seqId
            finally:
                await to_thread(sim.resume, "okx")
        assert client.book.top("bid") == true["bids"] and client.book.top("ask") == true["asks"]
        assert client.gaps == 0 and client.mismatches == 0 and client.jumps > 0
        assert all(c != 0 for c in client.checksums)                           # legacy mode
    run(scenario())


def test_reset_is_not_a_gap_and_gap_is(sim):
    async def scenario():
        client = OkxClient()
        async with await open_ws(sim, sim.ws_url("okx")) as ws:
            await subscribe(ws, "ETH-USDT")
            await read(ws, client, lambda: client.updates >= 10)
            await to_thread(sim.fault, "okx", "reset", symbol="ETH-USDT")
            await read(ws, client, lambda: client.resets == 1)
            await read(ws, client, lambda: client.updates >= 30)
            assert client.gaps == 0 and client.mismatches == 0
            await to_thread(sim.fault, "okx", "gap", symbol="ETH-USDT")
            await read(ws, client, lambda: client.gaps == 1)
            await to_thread(sim.fault, "okx", "bad_checksum", symbol="ETH-USDT")
            await subscribe(ws, "ETH-USDT", req_id="2")            # resubscribe: a fresh snapshot
            before = client.mismatches
            await read(ws, client, lambda: client.mismatches > before)
    run(scenario())


def test_text_ping_keeps_an_idle_connection_and_silence_is_killed(sim):
    async def scenario():
        await to_thread(sim.pause, "okx")
        try:
            async with await open_ws(sim, sim.ws_url("okx")) as pinging, \
                    await open_ws(sim, sim.ws_url("okx")) as silent:
                for ws in (pinging, silent):
                    await subscribe(ws, "BTC-USDT")
                pongs = {"n": 0}

                async def keep_pinging():      # every 0.2 s, well inside the 1.5 s idle limit
                    while True:
                        await pinging.send("ping")
                        await asyncio.sleep(0.2)

                async def count_pongs():
                    async for text in pinging:
                        pongs["n"] += text == "pong"
                tasks = [asyncio.ensure_future(keep_pinging()), asyncio.ensure_future(count_pongs())]
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        await asyncio.wait_for(silent.recv(), 10)
                assert closed.value.rcvd.code == 4004
                while pongs["n"] < 10:                   # 2 s: past the idle limit
                    assert not tasks[1].done()
                    await asyncio.sleep(0.05)
                for task in tasks:
                    task.cancel()
        finally:
            await to_thread(sim.resume, "okx")
        assert (await to_thread(sim.counters, "okx"))["closes_idle"] >= 1
    run(scenario())


def test_unsubscribed_connection_is_killed_after_idle(sim):
    async def scenario():
        async with await open_ws(sim, sim.ws_url("okx")) as ws:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
    run(scenario())


def test_zero_checksum_mode_and_errors():
    with Obsim(["--exchanges", "okx", "--rate", "100"]) as sim:
        async def scenario():
            client = OkxClient()
            async with await open_ws(sim, sim.ws_url("okx")) as ws:
                await ws.send(json.dumps({"op": "subscribe", "args": [{"channel": "books", "instId": "NOPE"}]}))
                err = await recv_json(ws)
                assert err["event"] == "error" and err["code"] == "60018"
                await ws.send("{not json")
                assert (await recv_json(ws))["event"] == "error"
                await subscribe(ws, "BTC-USDT")
                await read(ws, client, lambda: client.updates >= 20)
            assert set(client.checksums) == {0}
        run(scenario())


def test_replay_of_the_recording_with_legacy_checksums():
    recordings = recordings_dir()
    with Obsim(["--exchanges", "okx", "--source", "replay", "--recordings", str(recordings),
                "--rate", "200", "--depth", "400", "--okx-checksum", "legacy", "--start-paused"]) as sim:
        async def scenario():
            client = OkxClient()
            async with await open_ws(sim, sim.ws_url("okx")) as ws:
                await subscribe(ws, "BTC-USDT")
                await to_thread(sim.resume, "okx")
                await read(ws, client, lambda: client.updates >= 90)
            assert client.mismatches == 0 and client.gaps == 0
        run(scenario())


def test_subscribe_requests_per_hour_are_limited():
    with Obsim(["--exchanges", "okx", "--okx-subscribes-per-hour-max", "3"]) as sim:
        async def scenario():
            async with await open_ws(sim, sim.ws_url("okx")) as ws:
                replies = []
                for i in range(4):
                    await subscribe(ws, "BTC-USDT", req_id=str(i))
                    while True:
                        msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
                        if msg.get("id") == str(i):
                            replies.append(msg["event"])
                            break
                assert replies == ["subscribe", "subscribe", "subscribe", "error"]
        run(scenario())
