"""obsim's Coinbase Advanced Trade venue, checked by an independent client."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.exceptions import ConnectionClosed

from obsim.harness import Obsim

from .simkit import LittleBook, open_ws, recordings_dir, recv_json, run, to_thread

ARGS = ["--exchanges", "coinbase", "--rate", "150", "--coinbase-depth", "2000", "--coinbase-connects-max", "0",
        "--coinbase-subscribe-deadline-s", "1.5", "--coinbase-idle-s", "1.5",
        "--coinbase-heartbeat-s", "0.1", "--symbols", "BTC/USD,ETH/USD,SOL/USD"]


@pytest.fixture(scope="module")
def sim():
    with Obsim(ARGS) as sim:
        yield sim


class CoinbaseClient:
    def __init__(self) -> None:
        self.books: dict[str, LittleBook] = {}
        self.seq_next = 0
        self.seq_jumps = 0
        self.snapshots = 0
        self.sides: set[str] = set()
        self.heartbeats = 0

    def on_message(self, msg: dict) -> None:
        if msg["sequence_num"] != self.seq_next:
            self.seq_jumps += 1
        self.seq_next = msg["sequence_num"] + 1
        if msg["channel"] == "heartbeats":
            self.heartbeats += 1
        if msg["channel"] != "l2_data":
            return
        for event in msg["events"]:
            book = self.books.setdefault(event["product_id"], LittleBook())
            if event["type"] == "snapshot":
                self.snapshots += 1
                book.clear()
            for update in event["updates"]:
                self.sides.add(update["side"])
                book.set("bid" if update["side"] == "bid" else "ask", update["price_level"], update["new_quantity"])


async def subscribe(ws, channel: str, products=None, kind="subscribe"):
    msg = {"type": kind, "channel": channel}
    if products is not None:
        msg["product_ids"] = products
    await ws.send(json.dumps(msg))


async def read(ws, client: CoinbaseClient, until, timeout_s: float = 10.0):
    while not until():
        client.on_message(json.loads(await asyncio.wait_for(ws.recv(), timeout_s)))


async def compare(sim, ws, client, product: str) -> None:
    """Pause, then drain: the reply to a request sent after the pause is queued behind every
    update rendered before it, so once it arrives the client has seen them all."""
    await to_thread(sim.pause, "coinbase")
    try:
        true = await to_thread(sim.book, "coinbase", product, 1_000_000)
        await subscribe(ws, "heartbeats")
        while True:
            msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
            client.on_message(msg)
            if msg["channel"] == "subscriptions":
                break
    finally:
        await to_thread(sim.resume, "coinbase")
    book = client.books[product]
    assert book.top("bid") == true["bids"] and book.top("ask") == true["asks"]


def test_level2_snapshot_updates_sequence_and_true_book(sim):
    async def scenario():
        client = CoinbaseClient()
        async with await open_ws(sim, sim.ws_url("coinbase")) as ws:
            await subscribe(ws, "heartbeats")
            await subscribe(ws, "level2", ["BTC-USD", "ETH-USD"])
            first = json.loads(await ws.recv())
            assert first["channel"] == "subscriptions" and first["sequence_num"] == 0
            client.on_message(first)
            await read(ws, client, lambda: client.snapshots == 2 and client.seq_next > 300)
            await compare(sim, ws, client, "BTC-USD")
            await compare(sim, ws, client, "ETH-USD")
        assert client.seq_jumps == 0
        assert client.sides == {"bid", "offer"}               # asks are called offer
    run(scenario())


def test_multi_megabyte_snapshot_in_one_frame():
    with Obsim(["--exchanges", "coinbase", "--start-paused"]) as sim:      # default depth: 12000/side
        async def scenario():
            async with await open_ws(sim, sim.ws_url("coinbase")) as ws:
                await subscribe(ws, "level2", ["BTC-USD"])
                while True:
                    text = await asyncio.wait_for(ws.recv(), 20)
                    if '"snapshot"' in text[:300]:
                        break
                assert len(text) > 2_000_000
                event = json.loads(text)["events"][0]
                assert len(event["updates"]) == 24_000
        run(scenario())


def test_subscribe_deadline_closes_a_silent_connection(sim):
    async def scenario():
        async with await open_ws(sim, sim.ws_url("coinbase")) as ws:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 10)
        assert (await to_thread(sim.counters, "coinbase"))["closes_subscribe_deadline"] >= 1
    run(scenario())


def test_too_many_l2_products_is_refused():
    with Obsim(["--exchanges", "coinbase", "--coinbase-depth", "200", "--coinbase-l2-products-max", "2",
                "--symbols", "BTC/USD,ETH/USD,SOL/USD"]) as sim:
        async def scenario():
            async with await open_ws(sim, sim.ws_url("coinbase")) as ws:
                await subscribe(ws, "level2", ["BTC-USD", "ETH-USD", "SOL-USD"])
                msg = await recv_json(ws)
                assert msg == {"type": "error", "message": "too many L2 streams requested in a single session"}
                await subscribe(ws, "level2", ["BTC-USD", "ETH-USD"])
                assert (await recv_json(ws))["channel"] == "subscriptions"    # within the limit: fine
        run(scenario())


def test_idle_channel_closed_without_heartbeats_but_kept_with_them(sim):
    async def scenario():
        await to_thread(sim.pause, "coinbase")
        try:
            async with await open_ws(sim, sim.ws_url("coinbase")) as kept, \
                    await open_ws(sim, sim.ws_url("coinbase")) as dropped:
                await subscribe(kept, "heartbeats")
                await subscribe(kept, "level2", ["SOL-USD"])
                await subscribe(dropped, "level2", ["SOL-USD"])
                with pytest.raises(ConnectionClosed):
                    while True:
                        await asyncio.wait_for(dropped.recv(), 10)
                client = CoinbaseClient()
                await read(kept, client, lambda: client.heartbeats >= 3)
                assert client.seq_jumps == 0
        finally:
            await to_thread(sim.resume, "coinbase")
    run(scenario())


def test_gap_fault_jumps_sequence_num_and_reset_resends_a_snapshot(sim):
    async def scenario():
        client = CoinbaseClient()
        async with await open_ws(sim, sim.ws_url("coinbase")) as ws:
            await subscribe(ws, "heartbeats")
            await subscribe(ws, "level2", ["ETH-USD"])
            await read(ws, client, lambda: client.snapshots == 1 and client.seq_next > 20)
            await to_thread(sim.fault, "coinbase", "gap", symbol="ETH-USD")
            await read(ws, client, lambda: client.seq_jumps == 1)
            await to_thread(sim.fault, "coinbase", "reset", symbol="ETH-USD")
            await read(ws, client, lambda: client.snapshots == 2)
            await compare(sim, ws, client, "ETH-USD")          # the new snapshot healed the gap
    run(scenario())


def test_bad_requests_get_errors_and_the_connection_stays(sim):
    async def scenario():
        async with await open_ws(sim, sim.ws_url("coinbase")) as ws:
            for bad in ("nope", json.dumps({"type": "subscribe", "channels": ["level2"]}),
                        json.dumps({"type": "subscribe", "channel": "level2", "product_ids": ["NOPE-USD"]})):
                await ws.send(bad)
                assert (await recv_json(ws))["type"] == "error"
            await subscribe(ws, "heartbeats")
            assert (await recv_json(ws))["channel"] == "subscriptions"
    run(scenario())


def test_replay_of_the_exchange_recording_served_as_advanced_trade():
    recordings = recordings_dir()
    with Obsim(["--exchanges", "coinbase", "--source", "replay", "--recordings", str(recordings),
                "--rate", "200", "--depth", "5000", "--coinbase-depth", "5000", "--coinbase-heartbeat-s", "0.1",
                "--start-paused"]) as sim:
        async def scenario():
            client = CoinbaseClient()
            async with await open_ws(sim, sim.ws_url("coinbase")) as ws:
                await subscribe(ws, "heartbeats")
                await subscribe(ws, "level2", ["SKL-USD"])
                await to_thread(sim.resume, "coinbase")
                await read(ws, client, lambda: client.seq_next > 300)
                await compare(sim, ws, client, "SKL-USD")
            assert client.seq_jumps == 0
        run(scenario())
