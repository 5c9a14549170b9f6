"""The faults every venue shares, on every venue, seen in the raw frames a client receives."""

from __future__ import annotations

import json
import time

import pytest

from obsim.harness import Obsim

from .rawws import RawWs

SUBSCRIBE = {
    "binance": ("/ws/btcusdt@depth", None),
    "binance-futures": ("/ws/btcusdt@depth", None),
    "coinbase": ("", {"type": "subscribe", "channel": "level2", "product_ids": ["BTC-USD"]}),
    "kraken": ("", {"method": "subscribe", "params": {"channel": "book", "symbol": ["BTC/USD"], "depth": 10}}),
    "okx": ("", {"op": "subscribe", "args": [{"channel": "books", "instId": "BTC-USDT"}]}),
    "bybit": ("", {"op": "subscribe", "args": ["orderbook.50.BTCUSDT"]}),
    "bybit-linear": ("", {"op": "subscribe", "args": ["orderbook.50.BTCUSDT"]}),
}
VENUES = list(SUBSCRIBE)
FRAMES_MAX = 2000


@pytest.fixture(scope="module")
def sim():
    with Obsim(["--rate", "100", "--depth", "60", "--coinbase-depth", "300", "--okx-connects-max", "0",
                "--coinbase-connects-max", "0",
                "--symbols", "BTC/USD", "--symbol", "binance=BTCUSDT", "--symbol", "binance-futures=BTCUSDT",
                "--symbol", "okx=BTC-USDT", "--symbol", "bybit=BTCUSDT", "--symbol", "bybit-linear=BTCUSDT"]) as sim:
        yield sim


def subscribed(sim: Obsim, venue: str) -> RawWs:
    path, message = SUBSCRIBE[venue]
    client = RawWs(sim.ws_url(venue) + path, sim.ca_file)
    if message is not None:
        client.send_text(json.dumps(message))
    return client


def frames_until(client: RawWs, predicate):
    for _ in range(FRAMES_MAX):
        frame = client.read_frame()
        if predicate(frame):
            return frame
    raise AssertionError(f"no matching frame in {FRAMES_MAX}")


@pytest.mark.parametrize("venue", VENUES)
def test_fragmented_frames_reassemble_to_json(sim, venue):
    client = subscribed(sim, venue)
    try:
        client.read_frame()
        sim.fault(venue, "fragment", count=3, fragment_bytes=8)
        fin, op, message = frames_until(client, lambda f: f[1] == 0x1 and not f[0])
        while not fin:
            fin, op, payload = client.read_frame()
            assert op == 0x0
            message += payload
        json.loads(message)
    finally:
        client.close()


@pytest.mark.parametrize("venue", VENUES)
def test_garbage_frame_arrives_and_the_stream_goes_on(sim, venue):
    client = subscribed(sim, venue)
    try:
        client.read_frame()
        sim.fault(venue, "garbage")
        frames_until(client, lambda f: f[1] == 0x1 and f[2].startswith(b'{"garbage"'))
        fin, op, payload = frames_until(client, lambda f: f[1] == 0x1)
        json.loads(payload)
    finally:
        client.close()


@pytest.mark.parametrize("venue", VENUES)
def test_disconnect_drops_the_connection(sim, venue):
    client = subscribed(sim, venue)
    try:
        client.read_frame()
        sim.fault(venue, "disconnect")
        with pytest.raises((EOFError, OSError)):
            frames_until(client, lambda f: False)
    finally:
        client.close()


@pytest.mark.parametrize("venue", [v for v in VENUES if not v.startswith("binance")])
def test_oversized_snapshot_on_the_websocket(sim, venue):
    sim.fault(venue, "oversized_snapshot", size_bytes=1_500_000)
    client = subscribed(sim, venue)
    try:
        fin, op, payload = frames_until(client, lambda f: len(f[2]) >= 1_500_000)
        assert fin and op == 0x1
        assert len(payload) == 1_500_000
        json.loads(payload)
    finally:
        client.close()


@pytest.mark.parametrize("venue,ping,is_pong", [
    ("okx", "ping", lambda p: p == b"pong"),
    ("bybit", json.dumps({"op": "ping", "req_id": "k"}), lambda p: b'"pong"' in p),
    ("bybit-linear", json.dumps({"op": "ping", "req_id": "k"}), lambda p: b'"pong"' in p),
])
def test_ping_deadline_mutes_pongs_then_they_come_back(sim, venue, ping, is_pong):
    client = subscribed(sim, venue)
    try:
        client.send_text(ping)
        frames_until(client, lambda f: is_pong(f[2]))
        sim.fault(venue, "ping_deadline", duration_s=30)
        client.send_text(ping)
        for _ in range(60):                       # the stream flows; no pong among it
            assert not is_pong(client.read_frame()[2])
    finally:
        client.close()
    assert sim.counters(venue)["pings_answered"] >= 1


def test_control_rejects_unknown_faults_and_symbols(sim):
    from obsim.harness import ObsimError
    # The sim is shared by the module's tests (on this worker, in any order): only this test's
    # own faults are counted, as the change across it.
    before = sim.counters()
    with pytest.raises(ObsimError, match="no fault"):
        sim.fault("coinbase", "bad_checksum")
    with pytest.raises(ObsimError, match="no symbol"):
        sim.fault("kraken", "gap", symbol="NOPE")
    with pytest.raises(ObsimError, match="count"):
        sim.fault("kraken", "gap", count="x")
    with pytest.raises(ObsimError, match="unknown exchange"):
        sim.pause("nope")
    for venue in VENUES:
        sim.fault(venue, "garbage")                # accepted: counted once per venue
    after = sim.counters()
    assert set(after) == set(VENUES)
    injected = {v: after[v]["faults_injected"] - before[v]["faults_injected"] for v in VENUES}
    assert injected == dict.fromkeys(VENUES, 1)    # a refused fault is not counted


BAD_INPUTS = ["", "nope", "[]", "[1,2]", "null", "5", '{"op": 5, "args": "x"}', '{"method": "subscribe", "params": []}',
              '{"method": "SUBSCRIBE", "params": [{"a": 1}], "id": {}}', '{"type": "subscribe", "channel": 7}',
              '{"type": "subscribe", "channel": "level2", "product_ids": [1, null]}',
              '{"method": "subscribe", "params": {"channel": "book", "symbol": "BTC/USD", "depth": "x"}}',
              '{"op": "subscribe", "args": [1, null, {"channel": 2}]}', '{"op": "subscribe", "args": [{"channel": "books"}]}',
              "\u00e9\u00e8" * 10, '{"deep": ' * 50 + "1" + "}" * 50]


@pytest.mark.parametrize("venue", VENUES)
def test_bad_client_input_never_breaks_the_venue(sim, venue):
    before = sim.counters(venue)
    client = RawWs(sim.ws_url(venue) + SUBSCRIBE[venue][0], sim.ca_file)
    try:
        for text in BAD_INPUTS[:4] if venue.startswith("binance") else BAD_INPUTS:
            client.send_text(text)
    finally:
        client.close()
    fresh = subscribed(sim, venue)                 # the venue still serves a new client normally
    try:
        frames_until(fresh, lambda f: f[1] == 0x1 and (b"depthUpdate" in f[2] or b"snapshot" in f[2]))
    finally:
        fresh.close()
    after = sim.counters(venue)
    assert after["connections"] == before["connections"] + 2
    assert after["handler_errors"] == 0
    assert after["bad_client_messages"] > before["bad_client_messages"]     # seen, counted, answered


def test_a_client_that_stops_reading_is_cut_off_as_a_slow_consumer():
    with Obsim(["--exchanges", "binance", "--rate", "4000", "--changes-per-event", "40", "--depth", "200",
                "--send-bytes-max", "300000"]) as sim:
        client = RawWs(sim.ws_url("binance") + "/ws/btcusdt@depth", sim.ca_file)
        try:
            client.read_frame()                                # subscribed; now never read again
            deadline_s = time.monotonic() + 30
            while (counters := sim.counters("binance"))["connections_open"] or not counters["closes_slow_consumer"]:
                assert time.monotonic() < deadline_s, "slow consumer never cut off"
                time.sleep(0.05)
        finally:
            client.close()
        assert counters["closes_slow_consumer"] == 1                # counted once
