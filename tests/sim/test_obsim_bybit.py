"""obsim's Bybit v5 venues (spot and linear), checked by an independent client."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.exceptions import ConnectionClosed

from obsim.harness import Obsim

from .simkit import LittleBook, open_ws, recordings_dir, recv_json, run, to_thread

ARGS = ["--exchanges", "bybit,bybit-linear", "--rate", "150", "--depth", "80",
        "--bybit-level1-repush-s", "0.3", "--bybit-idle-s", "1.5"]


@pytest.fixture(scope="module")
def sim():
    with Obsim(ARGS) as sim:
        yield sim


class BybitClient:
    def __init__(self, depth: int) -> None:
        self.book = LittleBook(depth)
        self.u: int | None = None
        self.gaps = self.restarts = self.deltas = self.snapshots = 0
        self.key_orders: set[tuple] = set()

    def on_push(self, msg: dict) -> None:
        self.key_orders.add(tuple(msg))
        data = msg["data"]
        if msg["type"] == "snapshot":
            self.snapshots += 1
            self.restarts += data["u"] == 1
            self.book.clear()
        elif data["u"] != self.u + 1:
            self.gaps += 1
        else:
            self.deltas += 1
        self.u = data["u"]
        for side, key in (("bid", "b"), ("ask", "a")):
            for price, size in data[key]:
                self.book.set(side, price, size)
        self.book.truncate()


async def op(ws, name: str, args=None, req_id="r1"):
    msg = {"req_id": req_id, "op": name}
    if args is not None:
        msg["args"] = args
    await ws.send(json.dumps(msg))


async def read(ws, client: BybitClient, until, timeout_s: float = 10.0):
    while not until():
        msg = json.loads(await asyncio.wait_for(ws.recv(), timeout_s))
        if "topic" in msg:
            client.on_push(msg)


async def follow_and_compare(sim, exchange: str, symbol: str, depth: int, resume=False) -> BybitClient:
    client = BybitClient(depth)
    async with await open_ws(sim, sim.ws_url(exchange)) as ws:
        await op(ws, "subscribe", [f"orderbook.{depth}.{symbol}"])
        ack = await recv_json(ws)
        assert ack["success"] is True and ack["op"] == "subscribe" and ack["req_id"] == "r1"
        assert ack["ret_msg"] == ("subscribe" if exchange == "bybit" else "")
        if resume:
            await to_thread(sim.resume, exchange)
        await read(ws, client, lambda: client.deltas >= 200)
        await to_thread(sim.pause, exchange)
        try:
            true = await to_thread(sim.book, exchange, symbol, depth)
            await read(ws, client, lambda: client.u == true["sequence"][str(depth)])
        finally:
            await to_thread(sim.resume, exchange)
    assert client.book.top("bid") == true["bids"] and client.book.top("ask") == true["asks"]
    assert client.gaps == 0
    return client


def test_spot_snapshot_delta_u_chain_and_key_order(sim):
    client = run(follow_and_compare(sim, "bybit", "BTCUSDT", 50))
    assert client.key_orders == {("topic", "ts", "type", "data", "cts")}


def test_linear_key_order_differs(sim):
    client = run(follow_and_compare(sim, "bybit-linear", "ETHUSDT", 50))
    assert client.key_orders == {("topic", "type", "ts", "data", "cts")}


def test_duplicate_subscribe_refused_and_resync_by_unsubscribe(sim):
    async def scenario():
        async with await open_ws(sim, sim.ws_url("bybit")) as ws:
            topic = "orderbook.50.ETHUSDT"
            await op(ws, "subscribe", [topic])
            while (msg := await recv_json(ws)).get("op") != "subscribe":
                pass
            await op(ws, "subscribe", [topic], req_id="r2")
            while (msg := await recv_json(ws)).get("op") != "subscribe":
                pass
            assert msg["success"] is False and "already subscribed" in msg["ret_msg"]
            await op(ws, "unsubscribe", [topic], req_id="r3")
            while (msg := await recv_json(ws)).get("op") != "unsubscribe":
                pass
            assert msg["success"] is True
            await op(ws, "subscribe", [topic], req_id="r4")
            while (msg := await recv_json(ws)).get("type") != "snapshot":
                pass
            await op(ws, "subscribe", [f"orderbook.50.S{i}" for i in range(11)], req_id="r5")
            while (msg := await recv_json(ws)).get("req_id") != "r5":
                pass
            assert msg["success"] is False and "args" in msg["ret_msg"]        # spot: 10 args max
            await ws.send("garbage")
            while "success" not in (msg := await recv_json(ws)):
                pass
            assert msg["success"] is False
    run(scenario())


def test_gap_and_restart_faults(sim):
    async def scenario():
        client = BybitClient(50)
        async with await open_ws(sim, sim.ws_url("bybit-linear")) as ws:
            await op(ws, "subscribe", ["orderbook.50.BTCUSDT"])
            await read(ws, client, lambda: client.deltas >= 10)
            await to_thread(sim.fault, "bybit-linear", "gap", symbol="BTCUSDT")
            await read(ws, client, lambda: client.gaps == 1)
            await to_thread(sim.fault, "bybit-linear", "reset", symbol="BTCUSDT")
            await read(ws, client, lambda: client.restarts == 1)
            start = client.deltas
            await read(ws, client, lambda: client.deltas >= start + 20)
            assert client.u == 21 and client.gaps == 1              # counts on from u = 1
    run(scenario())


def test_level1_is_snapshot_only_and_repushed_with_the_same_u(sim):
    async def scenario():
        client = BybitClient(1)
        async with await open_ws(sim, sim.ws_url("bybit")) as ws:
            await op(ws, "subscribe", ["orderbook.1.BTCUSDT"])
            await read(ws, client, lambda: client.snapshots >= 5)
            assert client.deltas == 0
            await to_thread(sim.pause, "bybit")
            try:
                us: list[int] = []
                seen = client.snapshots

                def three_alike() -> bool:     # a quiet book is re-pushed with the same u
                    if client.snapshots > seen + len(us):
                        us.append(client.u)
                    return len(us) >= 3 and us[-1] == us[-2] == us[-3]
                await read(ws, client, three_alike)
            finally:
                await to_thread(sim.resume, "bybit")
    run(scenario())


def test_op_ping_and_idle_close(sim):
    async def scenario():
        await to_thread(sim.pause, "bybit")
        try:
            async with await open_ws(sim, sim.ws_url("bybit")) as ws:
                await op(ws, "ping", req_id="p1")
                msg = await recv_json(ws)
                assert msg["success"] is True and msg["ret_msg"] == "pong" and msg["op"] == "ping"
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 10)           # no pings, no data: cut
        finally:
            await to_thread(sim.resume, "bybit")
    run(scenario())


def test_replay_of_the_old_orderbook_recording():
    recordings = recordings_dir()
    with Obsim(["--exchanges", "bybit", "--source", "replay", "--recordings", str(recordings),
                "--rate", "200", "--depth", "25", "--start-paused"]) as sim:
        client = run(follow_and_compare(sim, "bybit", "BTCUSD", 50, resume=True))
        assert client.deltas >= 200


def test_topic_characters_per_connection_are_capped(sim):
    async def scenario():
        async with await open_ws(sim, sim.ws_url("bybit-linear")) as ws:
            await op(ws, "subscribe", ["orderbook.50.BTCUSDT"])
            while (msg := await recv_json(ws)).get("op") != "subscribe":
                pass
            assert msg["success"] is True
            await op(ws, "subscribe", ["orderbook.1." + "X" * 21_000], req_id="big")
            while (msg := await recv_json(ws)).get("req_id") != "big":
                pass
            assert msg["success"] is False and "21000" in msg["ret_msg"]
    run(scenario())


def test_full_depth_stream_with_rest_snapshot_rebuilds_the_true_book(sim):
    """orderbook.full: deltas only; buffer, fetch REST, drop u <= snapshot u, apply in u order."""
    async def scenario():
        book, buffered, state = LittleBook(), [], {"u": None, "gaps": 0, "restarts": 0}

        def apply(data):
            for side, key in (("bid", "b"), ("ask", "a")):
                for price, size in data[key]:
                    book.set(side, price, size)
            state["u"] = data["u"]

        def on_delta(data):
            if state["u"] is None:
                buffered.append(data)
            elif data["u"] == 1:
                state["restarts"] += 1
                state["u"], buffered[:] = None, [data]
            elif data["u"] <= state["u"]:
                return                             # already in the snapshot
            elif data["u"] != state["u"] + 1:
                state["gaps"] += 1
                state["u"], buffered[:] = None, [data]
            else:
                apply(data)

        async def sync():
            while state["u"] is None:
                while not buffered:
                    await read_some()
                status, body = await to_thread(sim.request, sim.rest_url("bybit"), "GET", "/v5/market/full_orderbook",
                                               {"category": "spot", "symbol": "ETHUSDT"})
                snap = json.loads(body)["result"]
                pending = [d for d in buffered if d["u"] > snap["u"]]
                if snap["u"] + 1 < buffered[0]["u"] or (pending and pending[0]["u"] != snap["u"] + 1):
                    continue                       # snapshot older than the buffer: fetch again
                book.clear()
                apply({"b": snap["b"], "a": snap["a"], "u": snap["u"]})
                buffered.clear()
                for data in pending:
                    apply(data)

        async def read_some():
            msg = json.loads(await asyncio.wait_for(ws.recv(), 10))
            if msg.get("topic") == "orderbook.full.ETHUSDT":
                assert msg["type"] == "delta"
                on_delta(msg["data"])

        async with await open_ws(sim, sim.ws_url("bybit")) as ws:
            await op(ws, "subscribe", ["orderbook.full.ETHUSDT"])
            await sync()
            for kind, key in (("gap", "gaps"), ("reset", "restarts")):
                await to_thread(sim.fault, "bybit", kind, symbol="ETHUSDT")
                while state[key] == 0:
                    await read_some()
                await sync()
            await to_thread(sim.pause, "bybit")
            try:
                true = await to_thread(sim.book, "bybit", "ETHUSDT", 1000)
                while state["u"] != true["sequence"]["full"]:
                    await read_some()
            finally:
                await to_thread(sim.resume, "bybit")
        assert book.top("bid") == true["bids"] and book.top("ask") == true["asks"]
    run(scenario())


def test_full_depth_is_spot_only(sim):
    async def scenario():
        async with await open_ws(sim, sim.ws_url("bybit-linear")) as ws:
            await op(ws, "subscribe", ["orderbook.full.BTCUSDT"])
            msg = await recv_json(ws)
            assert msg["success"] is False and "handler not found" in msg["ret_msg"]
    run(scenario())
