"""obsim's Binance spot and USD-M futures venues, checked by an independent client."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.exceptions import ConnectionClosed

from obsim.harness import Obsim
from .simkit import LittleBook, open_ws, recordings_dir, recv_json, run, to_thread, wait_for
from .rawws import RawWs

ARGS = ["--exchanges", "binance,binance-futures", "--rate", "200", "--depth", "60",
        "--binance-ping-interval-s", "0.3", "--binance-pong-timeout-s", "5",
        "--binance-futures-ping-interval-s", "0.3", "--binance-futures-pong-timeout-s", "5",
        "--binance-rest-weight-max", "100000", "--binance-ban-s", "0.5",
        "--binance-retry-grace-s", "0"]


@pytest.fixture(scope="module")
def sim():
    with Obsim(ARGS) as sim:
        yield sim


EVENTS_AFTER_SYNC = 20     # about 0.1 s of one symbol at --rate 200


class DepthSync:
    """Binance's documented local-book procedure, spot or futures (docs/EXCHANGES.md 1, 1b)."""

    def __init__(self, futures: bool) -> None:
        self.futures = futures
        self.book = LittleBook()
        self.buffered: list[dict] = []
        self.last_u: int | None = None
        self.first_U: int | None = None
        self.gaps = 0
        self.noncontiguous = 0
        self.applied = 0        # events applied to the book (not buffered, not dropped)
        # After a snapshot newer than every buffered event, the next event must still straddle
        # its id (futures ids are not contiguous: the id can fall inside an event's U..u).
        self.bridging = False

    def on_event(self, ev: dict) -> None:
        if self.first_U is None:
            self.first_U = ev["U"]
        if self.last_u is None:
            self.buffered.append(ev)
        elif self.bridging:
            self.bridge(ev)
        else:
            self.apply(ev)

    def bridge(self, ev: dict) -> None:
        """The first event after a snapshot that no buffered event reached."""
        if ev["u"] < self.last_u or (not self.futures and ev["u"] == self.last_u):
            return                      # older than the snapshot
        self.bridging = False
        if ev["U"] > (self.last_u if self.futures else self.last_u + 1):
            self.gaps += 1
            return self.restart()
        self.apply(ev, first=True)

    def on_snapshot(self, snap: dict) -> bool:
        """Seed from a snapshot; False if it is older than the stream (fetch again)."""
        last_id = snap["lastUpdateId"]
        if last_id < self.first_U:
            return False
        pending = [ev for ev in self.buffered
                   if not (ev["u"] < last_id or (not self.futures and ev["u"] == last_id))]
        if pending:
            first_U = pending[0]["U"]
            if first_U > (last_id if self.futures else last_id + 1):
                return False            # the snapshot falls between events: fetch again
        self.book.clear()
        for price, size in snap["bids"]:
            self.book.set("bid", price, size)
        for price, size in snap["asks"]:
            self.book.set("ask", price, size)
        self.last_u = last_id
        self.bridging = not pending
        self.buffered = []
        for i, ev in enumerate(pending):
            self.apply(ev, first=i == 0)
        return True

    def apply(self, ev: dict, first: bool = False) -> None:
        if not first:
            if self.futures:
                if ev["pu"] != self.last_u:
                    self.gaps += 1
                    return self.restart()
                if ev["U"] != self.last_u + 1:
                    self.noncontiguous += 1
            elif ev["u"] <= self.last_u:
                return
            elif ev["U"] != self.last_u + 1:
                self.gaps += 1
                return self.restart()
        for price, size in ev["b"]:
            self.book.set("bid", price, size)
        for price, size in ev["a"]:
            self.book.set("ask", price, size)
        self.last_u = ev["u"]
        self.applied += 1

    def restart(self) -> None:
        self.last_u = None
        self.bridging = False
        self.first_U = None
        self.buffered = []


async def sync_and_compare(sim: Obsim, exchange: str, symbol: str, inject=None, resume=False) -> DepthSync:
    futures = exchange == "binance-futures"
    rest_path = "/fapi/v1/depth" if futures else "/api/v3/depth"
    sync = DepthSync(futures)
    url = f"{sim.ws_url(exchange)}/stream?streams={symbol.lower()}@depth@100ms"
    async with await open_ws(sim, url) as ws:
        async def fetch_until_synced():
            while sync.last_u is None:
                while sync.first_U is None:
                    await asyncio.sleep(0.01)
                status, body = await to_thread(sim.request, sim.rest_url(exchange), "GET", rest_path,
                                               {"symbol": symbol, "limit": 1000})
                assert status == 200, body
                sync.on_snapshot(json.loads(body))

        async def reader():
            async for message in ws:
                wrapper = json.loads(message)
                assert wrapper["stream"] == f"{symbol.lower()}@depth@100ms"
                sync.on_event(wrapper["data"])

        read_task = asyncio.ensure_future(reader())
        if resume:                                  # a replay started paused: play it now
            await to_thread(sim.resume, exchange)
        fetching = asyncio.ensure_future(fetch_until_synced())
        await fetching
        if inject is not None:
            gaps = sync.gaps
            await to_thread(inject)
            # The gap seen first, then the resync: a fetch started before the gap is noticed
            # ends at once (the book is still synced) and the book is never rebuilt.
            await wait_for(lambda: sync.gaps > gaps, 10)
            await fetch_until_synced()
        applied = sync.applied          # the comparison covers live events, not only a snapshot
        await wait_for(lambda: sync.applied >= applied + EVENTS_AFTER_SYNC, 10)
        await to_thread(sim.pause, exchange)
        true = await to_thread(sim.book, exchange, symbol, 1000)
        await wait_for(lambda: sync.last_u == true["sequence"])
        read_task.cancel()
    await to_thread(sim.resume, exchange)
    assert sync.book.top("bid") == true["bids"]
    assert sync.book.top("ask") == true["asks"]
    assert len(true["bids"]) == true["bid_levels"] > 10
    return sync


def test_spot_stream_and_snapshot_rebuild_the_true_book(sim):
    sync = run(sync_and_compare(sim, "binance", "BTCUSDT"))
    assert sync.gaps == 0


def test_futures_pu_chain_has_noncontiguous_ids_and_rebuilds_the_true_book(sim):
    sync = run(sync_and_compare(sim, "binance-futures", "ETHUSDT"))
    assert sync.gaps == 0
    assert sync.noncontiguous > 0          # U != previous u + 1, yet no gap: the pu chain holds


def test_gap_fault_is_seen_and_a_resync_rebuilds_the_book(sim):
    sync = run(sync_and_compare(sim, "binance", "ETHUSDT",
                                inject=lambda: sim.fault("binance", "gap", symbol="ETHUSDT")))
    assert sync.gaps == 1
    assert sim.counters("binance")["gaps_injected"] >= 1


def test_futures_gap_fault_breaks_the_pu_chain(sim):
    sync = run(sync_and_compare(sim, "binance-futures", "BTCUSDT",
                                inject=lambda: sim.fault("binance-futures", "gap", symbol="BTCUSDT")))
    assert sync.gaps == 1


def test_raw_stream_subscribe_method_and_message_shape(sim):
    async def scenario():
        async with await open_ws(sim, f"{sim.ws_url('binance')}/ws") as ws:
            await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@depth"], "id": 7}))
            assert await recv_json(ws) == {"result": None, "id": 7}
            event = await recv_json(ws)
            assert event["e"] == "depthUpdate" and event["s"] == "BTCUSDT"
            assert set(event) == {"e", "E", "s", "U", "u", "b", "a"}
            assert all(isinstance(p, str) and isinstance(q, str) for p, q in event["b"] + event["a"])
            await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": 8}))
            while (reply := await recv_json(ws)).get("id") != 8:
                pass
            assert reply["result"] == ["btcusdt@depth"]
            await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["nosuch@depth"], "id": 9}))
            while (reply := await recv_json(ws)).get("id") != 9:
                pass
            assert reply["error"]["code"] == 2
            await ws.send("not json")
            while "error" not in (reply := await recv_json(ws)):
                pass
            assert reply["error"]["code"] == 3          # bad input answered; connection stays
    run(scenario())


def test_futures_event_carries_T_and_pu(sim):
    async def scenario():
        async with await open_ws(sim, f"{sim.ws_url('binance-futures')}/ws/btcusdt@depth@100ms") as ws:
            event = await recv_json(ws)
            assert set(event) == {"e", "E", "T", "s", "U", "u", "pu", "b", "a"}
    run(scenario())


def test_microsecond_time_unit(sim):
    async def scenario():
        async with await open_ws(sim, f"{sim.ws_url('binance')}/ws/btcusdt@depth?timeUnit=MICROSECOND") as ws:
            event = await recv_json(ws)
            assert event["E"] > 10 ** 15                # µs since the epoch, not ms
    run(scenario())


@pytest.mark.parametrize("exchange,limit", [("binance", 5), ("binance-futures", 10)])
def test_inbound_message_limit_closes_the_connection(sim, exchange, limit):
    async def scenario():
        before = (await to_thread(sim.counters, exchange))["closes_rate_limit"]
        async with await open_ws(sim, f"{sim.ws_url(exchange)}/ws") as ws:
            for i in range(limit):                      # at the limit: still fine
                await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}))
            for _ in range(limit):
                assert "result" in await recv_json(ws)
            for i in range(limit + 2):                  # past it within a second: closed
                await ws.send(json.dumps({"method": "LIST_SUBSCRIPTIONS", "id": i}))
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await recv_json(ws)
            assert closed.value.rcvd.code == 1008
        assert (await to_thread(sim.counters, exchange))["closes_rate_limit"] == before + 1
    run(scenario())


async def drain_forever(ws) -> None:
    async for _ in ws:
        pass


def test_server_pings_are_answered_by_a_normal_client(sim):
    async def scenario():
        async with await open_ws(sim, f"{sim.ws_url('binance')}/ws/btcusdt@depth") as ws:
            drain = asyncio.ensure_future(drain_forever(ws))   # a reading client sees the pings
            before = (await to_thread(sim.counters, "binance")).get("pongs_received", 0)
            pongs = {"n": before}

            async def poll():
                while pongs["n"] < before + 2:
                    pongs["n"] = (await to_thread(sim.counters, "binance")).get("pongs_received", 0)
                    await asyncio.sleep(0.05)
            await asyncio.wait_for(poll(), 15)
            assert not drain.done()                             # still connected and streaming
            drain.cancel()
    run(scenario())


def test_a_client_that_never_pongs_is_dropped():
    with Obsim(ARGS[:2] + ["--binance-ping-interval-s", "0.2", "--binance-pong-timeout-s", "0.3"]) as sim:
        client = RawWs(f"{sim.ws_url('binance')}/ws/btcusdt@depth", sim.ca_file)
        try:
            with pytest.raises((EOFError, ConnectionError, OSError)):
                for _ in range(100_000):
                    client.read_frame()                         # read, never answer a ping
        finally:
            client.close()
        assert sim.counters("binance")["closes_ping_timeout"] == 1


def test_ping_deadline_fault_demands_a_pong():
    with Obsim(["--exchanges", "binance", "--binance-ping-interval-s", "3600"]) as sim:
        client = RawWs(f"{sim.ws_url('binance')}/ws/btcusdt@depth", sim.ca_file)
        try:
            sim.fault("binance", "ping_deadline", timeout_s=0.3)
            opcodes = []
            with pytest.raises((EOFError, ConnectionError, OSError)):
                for _ in range(100_000):
                    opcodes.append(client.read_frame()[1])
            assert 0x9 in opcodes                               # the demanded ping arrived
        finally:
            client.close()
        assert sim.counters("binance")["closes_ping_timeout"] == 1


def test_rest_errors_429_then_418_with_retry_after(sim):
    base, path = sim.rest_url("binance"), "/api/v3/depth"
    assert sim.request(base, "GET", path, {"symbol": "NOPE"})[0] == 400
    assert sim.request(base, "GET", path, {"symbol": "BTCUSDT", "limit": "x"})[0] == 400
    sim.fault("binance", "rest_429", retry_after_s=1)
    status, body = sim.request(base, "GET", path, {"symbol": "BTCUSDT"})
    assert status == 429 and int(sim.last_headers["retry-after"]) >= 1
    status, _ = sim.request(base, "GET", path, {"symbol": "BTCUSDT"})    # ignored Retry-After
    assert status == 418 and "retry-after" in sim.last_headers
    sim.fault("binance", "rest_418", retry_after_s=0.2)
    status, _ = sim.request(base, "GET", path, {"symbol": "BTCUSDT"})
    assert status == 418
    run(wait_for(lambda: sim.request(base, "GET", path, {"symbol": "BTCUSDT"})[0] == 200, every_s=0.3))


def test_requests_already_on_their_way_at_a_429_are_refused_not_banned():
    with Obsim(["--exchanges", "binance", "--binance-retry-grace-s", "30"]) as sim:
        base, path = sim.rest_url("binance"), "/api/v3/depth"
        sim.fault("binance", "rest_429", retry_after_s=60)
        assert sim.request(base, "GET", path, {"symbol": "BTCUSDT"})[0] == 429
        assert sim.request(base, "GET", path, {"symbol": "BTCUSDT"})[0] == 429   # within the grace
        counters = sim.counters("binance")
        assert (counters["rest_429"], counters["rest_418"]) == (2, 0)


def test_rest_weight_limit_gives_429():
    with Obsim(["--exchanges", "binance", "--binance-rest-weight-max", "12"]) as sim:
        base = sim.rest_url("binance")
        statuses = []
        for _ in range(3):
            statuses.append(sim.request(base, "GET", "/api/v3/depth", {"symbol": "BTCUSDT", "limit": 10})[0])
            if statuses[-1] == 200:
                assert sim.last_headers["x-mbx-used-weight-1m"] == str(5 * len(statuses))
        assert statuses == [200, 200, 429]               # weight 5 each, budget 12 per minute
        assert sim.counters("binance")["rest_429"] == 1


def test_stale_snapshot_fault_serves_a_snapshot_older_than_the_stream(sim):
    async def scenario():
        url = f"{sim.ws_url('binance')}/ws/btcusdt@depth"
        async with await open_ws(sim, url) as ws:
            first = await recv_json(ws)
            await to_thread(sim.fault, "binance", "stale_snapshot")
            status, body = await to_thread(sim.request, sim.rest_url("binance"), "GET", "/api/v3/depth",
                                           {"symbol": "BTCUSDT"})
            assert json.loads(body)["lastUpdateId"] < first["U"]
            status, body = await to_thread(sim.request, sim.rest_url("binance"), "GET", "/api/v3/depth",
                                           {"symbol": "BTCUSDT"})
            assert json.loads(body)["lastUpdateId"] >= first["U"]
    run(scenario())


def test_oversized_snapshot_is_the_same_json_padded(sim):
    sim.fault("binance", "oversized_snapshot", size_bytes=3_000_000)
    sim.pause("binance")
    try:
        status, big = sim.request(sim.rest_url("binance"), "GET", "/api/v3/depth", {"symbol": "BTCUSDT"})
        status2, normal = sim.request(sim.rest_url("binance"), "GET", "/api/v3/depth", {"symbol": "BTCUSDT"})
    finally:
        sim.resume("binance")
    assert status == status2 == 200
    assert len(big) == 3_000_000 and len(normal) < 100_000
    assert json.loads(big) == json.loads(normal)


def test_disconnect_fault_drops_without_a_close_frame(sim):
    async def scenario():
        async with await open_ws(sim, f"{sim.ws_url('binance')}/ws/btcusdt@depth") as ws:
            await recv_json(ws)
            await to_thread(sim.fault, "binance", "disconnect")
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await recv_json(ws)
            assert closed.value.rcvd is None                    # abrupt: no close frame
    run(scenario())


def test_fragment_fault_splits_frames_and_garbage_fault_sends_non_json(sim):
    client = RawWs(f"{sim.ws_url('binance')}/ws/btcusdt@depth", sim.ca_file)
    try:
        client.read_frame()
        sim.fault("binance", "fragment", count=2, fragment_bytes=16)
        frames = [client.read_frame() for _ in range(200)]
        firsts = [i for i, (fin, op, _) in enumerate(frames) if op == 0x1 and not fin]
        assert firsts, "no fragmented message seen"
        i = firsts[0]
        message = frames[i][2]
        while True:
            i += 1
            fin, op, payload = frames[i]
            assert op == 0x0                                    # continuation frames follow
            message += payload
            if fin:
                break
        assert json.loads(message)["e"] == "depthUpdate"
        sim.fault("binance", "garbage")
        for _ in range(500):
            fin, op, payload = client.read_frame()
            if op == 0x1 and payload.startswith(b'{"garbage"'):
                break
        else:
            raise AssertionError("garbage frame not seen")
        with pytest.raises(ValueError):
            json.loads(payload)
    finally:
        client.close()


def test_stall_holds_frames_then_releases_them_in_order(sim):
    async def scenario():
        async with await open_ws(sim, f"{sim.ws_url('binance')}/ws/ethusdt@depth") as ws:
            last = (await recv_json(ws))["u"]
            await to_thread(sim.fault, "binance", "stall", duration_s=0.5)
            for _ in range(300):
                event = await recv_json(ws)
                assert event["U"] == last + 1                    # held, never dropped
                last = event["u"]
    run(scenario())


def test_server_shutdown_event_then_close(sim):
    async def scenario():
        async with await open_ws(sim, f"{sim.ws_url('binance')}/stream?streams=btcusdt@depth") as ws:
            await recv_json(ws)
            await to_thread(sim.fault, "binance", "server_shutdown", duration_s=0.2)
            seen = False
            with pytest.raises(ConnectionClosed):
                while True:
                    msg = await recv_json(ws)
                    seen = seen or msg.get("stream") == "!serverShutdown"
            assert seen
    run(scenario())


def test_lifetime_closes_the_connection():
    with Obsim(["--exchanges", "binance", "--binance-lifetime-s", "0.5"]) as sim:
        async def scenario():
            async with await open_ws(sim, f"{sim.ws_url('binance')}/ws/btcusdt@depth") as ws:
                with pytest.raises(ConnectionClosed) as closed:
                    while True:
                        await recv_json(ws)
                assert closed.value.rcvd.code == 1000
        run(scenario())


def test_replay_of_the_recordings_syncs_with_zero_gaps():
    recordings = recordings_dir()
    with Obsim(["--exchanges", "binance,binance-futures", "--source", "replay", "--recordings",
                str(recordings), "--rate", "50", "--binance-rest-weight-max", "100000", "--start-paused"]) as sim:
        assert "NKNUSDT" in sim.info["exchanges"]["binance"]["symbols"]
        sync = run(sync_and_compare(sim, "binance", "NKNUSDT", resume=True))
        assert sync.gaps == 0
        sync = run(sync_and_compare(sim, "binance-futures", "SUSHIUSDT", resume=True))
        assert sync.gaps == 0


def test_connection_attempt_limit_and_streams_per_connection():
    from websockets.exceptions import InvalidStatus
    with Obsim(["--exchanges", "binance", "--binance-connects-max", "2", "--binance-streams-max", "2"]) as sim:
        async def scenario():
            async with await open_ws(sim, f"{sim.ws_url('binance')}/ws") as ws:
                await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@depth", "ethusdt@depth"], "id": 1}))
                assert await recv_json(ws) == {"result": None, "id": 1}
                await ws.send(json.dumps({"method": "SUBSCRIBE", "params": ["btcusdt@depth@100ms"], "id": 2}))
                while (reply := await recv_json(ws)).get("id") != 2:
                    pass
                assert "over 2 streams" in reply["error"]["msg"]
                async with await open_ws(sim, f"{sim.ws_url('binance')}/ws"):
                    pass
                with pytest.raises(InvalidStatus) as refused:
                    await open_ws(sim, f"{sim.ws_url('binance')}/ws")
                assert refused.value.response.status_code == 429
                assert int(refused.value.response.headers["Retry-After"]) > 0
            assert (await to_thread(sim.counters, "binance"))["connects_refused"] == 1
        run(scenario())


def test_rest_stall_holds_one_reply_while_others_are_served(sim):
    async def scenario():
        base = sim.rest_url("binance")
        before = (await to_thread(sim.counters, "binance"))["rest_requests"]
        await to_thread(sim.fault, "binance", "rest_stall", duration_s=3)
        stalled = asyncio.ensure_future(to_thread(sim.request, base, "GET", "/api/v3/depth", {"symbol": "BTCUSDT"}))
        while (await to_thread(sim.counters, "binance"))["rest_requests"] == before:
            await asyncio.sleep(0.02)                       # the stalled request has arrived
        status, _ = await to_thread(sim.request, base, "GET", "/api/v3/depth", {"symbol": "ETHUSDT"})
        assert status == 200 and not stalled.done()         # answered while the first still waits
        status, body = await stalled
        assert status == 200 and json.loads(body)["lastUpdateId"] > 0
    run(scenario())


@pytest.mark.parametrize("exchange,path", [("binance", "/api/v3/exchangeInfo"), ("binance-futures", "/fapi/v1/exchangeInfo")])
def test_exchange_info_lists_the_served_symbols(sim, exchange, path):
    status, body = sim.request(sim.rest_url(exchange), "GET", path)
    assert status == 200
    symbols = {s["symbol"]: s for s in json.loads(body)["symbols"]}
    assert set(symbols) == set(sim.info["exchanges"][exchange]["symbols"])
    btc = symbols["BTCUSDT"]
    assert (btc["baseAsset"], btc["quoteAsset"], btc["status"]) == ("BTC", "USDT", "TRADING")
    assert btc["filters"][0]["filterType"] == "PRICE_FILTER" and float(btc["filters"][0]["tickSize"]) > 0
    assert (btc.get("contractType") == "PERPETUAL") == (exchange == "binance-futures")
