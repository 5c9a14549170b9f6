"""Binance spot and USD-M futures adapters: recordings and every sync transition."""

import orjson
import pytest

import feedrec
from observer.book import ASK, BID
from observer.feeds.actions import CatchUp, FeedProtocolError, FetchSnapshot, Publish, Reconnect, Stale
from observer.feeds.binance import BinanceAdapter
from observer.feeds.binance_futures import BinanceFuturesAdapter
from observer.feeds.sync import State

NS = 1_000_000_000


def kinds(actions, cls):
    return [a for a in actions if isinstance(a, cls)]


def snapshot_synced(adapter, symbol, status, headers, body, now_ns):
    """on_snapshot, then the backlog's turns (CatchUp) as the session would run them."""
    actions = adapter.on_snapshot(symbol, status, headers, body, now_ns)
    while CatchUp(symbol) in actions:
        actions = [a for a in actions if a != CatchUp(symbol)] + adapter.on_catch_up(symbol, now_ns)
    return actions


def replay(adapter_cls, ws_name, http_name):
    """Feed a recording: depth frames in order, each REST reply once its time has come and
    the adapter has asked for it. Returns the adapter and a reference book per symbol."""
    frames = [(ts, text) for ts, text in feedrec.frames(ws_name) if "@depth" in text[:60]]
    replies = {}
    for url, ts, body in feedrec.http_replies(http_name):
        symbol = url.split("symbol=")[1].split("&")[0]
        replies[symbol] = (ts, body)
    adapter = adapter_cls(list(replies), paranoid=True)
    adapter.scheduler.inflight_max = len(replies)
    wanted = set()
    start_ns = int(frames[0][0] * NS) - NS
    for action in adapter.on_open(0, start_ns):
        if isinstance(action, FetchSnapshot):
            wanted.add(action.symbol)
    assert len(wanted) == 1  # a probe first; the others once its good reply is in
    refs = {symbol: feedrec.RefBook() for symbol in replies}
    ref_id = {}
    pending = dict(replies)
    published = {symbol: 0 for symbol in replies}
    for ts, text in frames:
        for symbol, (reply_ts, body) in list(pending.items()):
            if reply_ts <= ts and symbol in wanted:
                del pending[symbol]
                snap = orjson.loads(body)
                refs[symbol].load(snap["bids"], snap["asks"])
                ref_id[symbol] = snap["lastUpdateId"]
                for action in snapshot_synced(adapter, symbol, 200, {}, body.encode(), int(reply_ts * NS)):
                    assert not isinstance(action, Stale)
                    if isinstance(action, FetchSnapshot):
                        wanted.add(action.symbol)
        event = orjson.loads(text)["data"]
        symbol = event["s"]
        if symbol in ref_id and event["u"] > ref_id[symbol]:
            for price, size in event["b"]:
                refs[symbol].set(BID, price, size)
            for price, size in event["a"]:
                refs[symbol].set(ASK, price, size)
            ref_id[symbol] = event["u"]
        for action in adapter.on_message(0, text.encode(), int(ts * NS)):
            assert not isinstance(action, (Stale, Reconnect, FetchSnapshot)), action
            if isinstance(action, Publish):
                published[action.symbol] += 1
    assert wanted == set(replies)
    return adapter, refs, published


@pytest.mark.parametrize(
    "adapter_cls, ws_name, http_name",
    [
        (BinanceAdapter, "BINANCE.ws.1.0", "BINANCE.http.0.0"),
        (BinanceFuturesAdapter, "BINANCE_FUTURES.ws.1.0", "BINANCE_FUTURES.http.0.0"),
    ],
)
def test_recording_syncs_with_zero_gaps(adapter_cls, ws_name, http_name):
    adapter, refs, published = replay(adapter_cls, ws_name, http_name)
    for symbol, sync in adapter.syncs.items():
        assert sync.state is State.LIVE, symbol
        assert sync.stats.gaps == 0
        assert sync.stats.resyncs == 0
        assert sync.stats.snapshots == 1
        assert published[symbol] >= 1
        book = adapter.books[symbol]
        for side in (BID, ASK):
            assert feedrec.as_decimal_levels(book, side) == refs[symbol].levels(side), (symbol, side)
    assert sum(sync.stats.messages for sync in adapter.syncs.values()) > 50


# ------------------------------------------------------------------------- synthetic


def depth(symbol, first, last, bids=(), asks=(), prev=None, event_ms=1700000000000):
    data = {"e": "depthUpdate", "E": event_ms, "s": symbol, "U": first, "u": last,
            "b": [list(level) for level in bids], "a": [list(level) for level in asks]}
    if prev is not None:
        data["pu"] = prev
    return orjson.dumps({"stream": f"{symbol.lower()}@depth@100ms", "data": data})


def snapshot(last_id, bids=(("100.0", "1"),), asks=(("101.0", "1"),)):
    return orjson.dumps({"lastUpdateId": last_id, "bids": [list(b) for b in bids],
                         "asks": [list(a) for a in asks]})


@pytest.fixture
def spot():
    adapter = BinanceAdapter(["BTCUSDT"], paranoid=True)
    actions = adapter.on_open(0, 10 * NS)
    assert kinds(actions, FetchSnapshot) == [
        FetchSnapshot("BTCUSDT", "https://api.binance.com/api/v3/depth?symbol=BTCUSDT&limit=1000")
    ]
    return adapter


def test_connection_url_holds_the_streams():
    adapter = BinanceAdapter(["BTCUSDT", "eth/usdt"], ws_url="wss://127.0.0.1:9443/")
    (conn,) = adapter.connections()
    assert conn.url == "wss://127.0.0.1:9443/stream?streams=btcusdt@depth@100ms/ethusdt@depth@100ms"
    assert conn.symbols == ("BTCUSDT", "ETHUSDT")


def test_buffers_until_snapshot_and_never_publishes_unsynced(spot):
    assert spot.on_message(0, depth("BTCUSDT", 5, 7, bids=[("99.5", "2")]), 11 * NS) == []
    actions = spot.on_message(0, depth("BTCUSDT", 8, 9, asks=[("101.5", "3")]), 11 * NS)
    assert actions == []
    assert spot.syncs["BTCUSDT"].state is State.AWAITING_SNAPSHOT
    actions = snapshot_synced(spot, "BTCUSDT", 200, {}, snapshot(7), 12 * NS)
    assert actions == [Publish("BTCUSDT")]
    book = spot.books["BTCUSDT"]
    assert book.update_id == 9
    # The event with u <= lastUpdateId was dropped: 99.5 is not in the book.
    assert book.levels(BID) == [(1000, 1)]
    assert book.levels(ASK) == [(1010, 1), (1015, 3)]
    assert spot.syncs["BTCUSDT"].stats.stale_dropped == 1


def test_old_snapshot_is_fetched_again(spot):
    spot.on_message(0, depth("BTCUSDT", 20, 21), 11 * NS)
    actions = snapshot_synced(spot, "BTCUSDT", 200, {}, snapshot(10), 12 * NS)
    assert kinds(actions, FetchSnapshot)
    assert not kinds(actions, Publish)
    sync = spot.syncs["BTCUSDT"]
    assert sync.stats.snapshots_old == 1
    assert sync.state is State.AWAITING_SNAPSHOT
    assert snapshot_synced(spot, "BTCUSDT", 200, {}, snapshot(20), 13 * NS) == [Publish("BTCUSDT")]
    assert spot.books["BTCUSDT"].update_id == 21


def test_gap_refetches_and_keeps_the_connection(spot):
    snapshot_synced(spot, "BTCUSDT", 200, {}, snapshot(10), 12 * NS)
    assert spot.on_message(0, depth("BTCUSDT", 11, 12, bids=[("100.0", "2")]), 13 * NS) == [Publish("BTCUSDT")]
    actions = spot.on_message(0, depth("BTCUSDT", 15, 16), 14 * NS)
    assert Stale("BTCUSDT", "gap") in actions
    assert kinds(actions, FetchSnapshot)
    assert not kinds(actions, Reconnect)
    sync = spot.syncs["BTCUSDT"]
    assert (sync.stats.gaps, sync.stats.resyncs, sync.state) == (1, 1, State.AWAITING_SNAPSHOT)
    assert spot.books["BTCUSDT"].depth(BID) == 0  # never published from a broken book
    # The event after the gap starts the new buffer; a fresh snapshot resumes.
    spot.on_message(0, depth("BTCUSDT", 17, 18, asks=[("102.0", "4")]), 14 * NS)
    assert snapshot_synced(spot, "BTCUSDT", 200, {}, snapshot(16), 15 * NS) == [Publish("BTCUSDT")]
    assert spot.books["BTCUSDT"].update_id == 18
    assert spot.books["BTCUSDT"].levels(ASK) == [(1010, 1), (1020, 4)]


def test_crossed_book_resyncs(spot):
    snapshot_synced(spot, "BTCUSDT", 200, {}, snapshot(10), 12 * NS)
    actions = spot.on_message(0, depth("BTCUSDT", 11, 11, bids=[("101.0", "1")]), 13 * NS)
    assert Stale("BTCUSDT", "crossed") in actions
    assert kinds(actions, FetchSnapshot)
    assert spot.syncs["BTCUSDT"].stats.crossed == 1


def test_duplicates_and_unknown_deletes(spot):
    snapshot_synced(spot, "BTCUSDT", 200, {}, snapshot(10), 12 * NS)
    message = depth("BTCUSDT", 11, 11, bids=[("99.0", "1"), ("99.0", "5"), ("98.0", "0")],
                    asks=[("105.0", "0")])
    assert spot.on_message(0, message, 13 * NS) == [Publish("BTCUSDT")]
    assert spot.books["BTCUSDT"].levels(BID) == [(1000, 1), (990, 5)]
    assert spot.books["BTCUSDT"].levels(ASK) == [(1010, 1)]


def test_rate_limited_snapshot_waits_for_retry_after(spot):
    actions = snapshot_synced(spot, "BTCUSDT", 429, {"retry-after": "30"}, b"", 12 * NS)
    assert not kinds(actions, FetchSnapshot)
    assert spot.on_tick(41 * NS) == []
    assert kinds(spot.on_tick(43 * NS), FetchSnapshot)
    assert spot.scheduler.rate_limited == 1


def test_server_shutdown_asks_for_reconnect(spot):
    message = orjson.dumps({"stream": "!serverShutdown", "data": {"e": "serverShutdown", "E": 1}})
    assert spot.on_message(0, message, 11 * NS) == [Reconnect(0, "serverShutdown")]


def test_close_marks_stale_and_reopen_refetches(spot):
    snapshot_synced(spot, "BTCUSDT", 200, {}, snapshot(10), 12 * NS)
    assert spot.on_close(0, "eof") == [Stale("BTCUSDT", "disconnect")]
    assert spot.syncs["BTCUSDT"].state is State.DOWN
    assert kinds(spot.on_open(0, 20 * NS), FetchSnapshot)


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b"[1,2]", b'{"stream":"x","data":5}', b'{"e":"nope"}', b"\xff\xfe",
     depth("BTCUSDT", 1, 2) + b" trailing", depth("ETHUSDT", 1, 2),
     b'{"stream":"s","data":{"e":"depthUpdate","E":1,"s":"BTCUSDT","U":"1","u":2,"b":[],"a":[]}}'],
)
def test_malformed_messages_raise_and_change_nothing(spot, data):
    with pytest.raises(FeedProtocolError):
        spot.on_message(0, data, 11 * NS)
    assert spot.syncs["BTCUSDT"].state is State.AWAITING_SNAPSHOT
    assert not spot.syncs["BTCUSDT"].buffer


def test_bad_level_mid_message_resyncs(spot):
    snapshot_synced(spot, "BTCUSDT", 200, {}, snapshot(10), 12 * NS)
    with pytest.raises(FeedProtocolError):
        spot.on_message(0, depth("BTCUSDT", 11, 11, bids=[("99.0", "1"), ("1_0", "1")]), 13 * NS)
    actions = spot.drain()
    assert Stale("BTCUSDT", "bad_message") in actions
    assert kinds(actions, FetchSnapshot)


def test_bad_snapshot_body_is_retried(spot):
    with pytest.raises(FeedProtocolError):
        snapshot_synced(spot, "BTCUSDT", 200, {}, b"<html>", 12 * NS)
    assert kinds(spot.on_tick(20 * NS), FetchSnapshot)


# --------------------------------------------------------------------------- futures


@pytest.fixture
def futures():
    adapter = BinanceFuturesAdapter(["BTCUSDT"], paranoid=True)
    assert kinds(adapter.on_open(0, 10 * NS), FetchSnapshot)[0].url.startswith(
        "https://fapi.binance.com/fapi/v1/depth?symbol=BTCUSDT")
    return adapter


def test_futures_pu_chain_with_noncontiguous_ids(futures):
    futures.on_message(0, depth("BTCUSDT", 90, 95, prev=80), 11 * NS)
    futures.on_message(0, depth("BTCUSDT", 99, 120, bids=[("99.0", "1")], prev=95), 11 * NS)
    assert snapshot_synced(futures, "BTCUSDT", 200, {}, snapshot(100), 12 * NS) == [Publish("BTCUSDT")]
    assert futures.books["BTCUSDT"].update_id == 120
    # Not contiguous (U jumps from 121 to 140), but pu chains: no gap.
    assert futures.on_message(0, depth("BTCUSDT", 140, 150, prev=120), 13 * NS) == [Publish("BTCUSDT")]
    actions = futures.on_message(0, depth("BTCUSDT", 160, 170, prev=155), 13 * NS)
    assert Stale("BTCUSDT", "gap") in actions
    assert futures.syncs["BTCUSDT"].stats.gaps == 1


def test_futures_first_event_must_span_last_update_id(futures):
    snapshot_synced(futures, "BTCUSDT", 200, {}, snapshot(100), 12 * NS)
    actions = futures.on_message(0, depth("BTCUSDT", 101, 110, prev=95), 13 * NS)
    # U <= lastUpdateId <= u fails (101 > 100), and pu is not 100: spot's +1 rule must not
    # be used here.
    assert Stale("BTCUSDT", "gap") in actions


def test_futures_event_right_after_the_snapshot_bridges_by_its_pu(futures):
    """The snapshot's own last event (u == lastUpdateId) never reached us, e.g. sent before
    the connection subscribed: the next one names it as `pu`, which proves it follows."""
    snapshot_synced(futures, "BTCUSDT", 200, {}, snapshot(100), 12 * NS)
    actions = futures.on_message(0, depth("BTCUSDT", 120, 130, prev=100), 13 * NS)
    assert actions == [Publish("BTCUSDT")]
    assert futures.books["BTCUSDT"].update_id == 130


def test_futures_requires_pu():
    adapter = BinanceFuturesAdapter(["BTCUSDT"])
    adapter.on_open(0, 0)
    with pytest.raises(FeedProtocolError):
        adapter.on_message(0, depth("BTCUSDT", 1, 2), 1)


def test_futures_old_snapshot_is_fetched_again(futures):
    futures.on_message(0, depth("BTCUSDT", 200, 210, prev=190), 11 * NS)
    actions = snapshot_synced(futures, "BTCUSDT", 200, {}, snapshot(150), 12 * NS)
    assert kinds(actions, FetchSnapshot)
    assert futures.syncs["BTCUSDT"].stats.snapshots_old == 1
    # lastUpdateId == U is enough on futures (no +1): this one bridges.
    assert snapshot_synced(futures, "BTCUSDT", 200, {}, snapshot(200), 13 * NS) == [Publish("BTCUSDT")]
    assert futures.books["BTCUSDT"].update_id == 210


def test_events_of_one_symbol_never_touch_another():
    adapter = BinanceAdapter(["BTCUSDT", "ETHUSDT"], paranoid=True)
    adapter.scheduler.inflight_max = 2
    adapter.on_open(0, 0)
    snapshot_synced(adapter, "BTCUSDT", 200, {}, snapshot(10), 1)
    snapshot_synced(adapter, "ETHUSDT", 200, {}, snapshot(10), 1)
    actions = adapter.on_message(0, depth("ETHUSDT", 20, 21), 2)
    assert Stale("ETHUSDT", "gap") in actions
    assert adapter.syncs["BTCUSDT"].state is State.LIVE
    assert adapter.on_message(0, depth("BTCUSDT", 11, 11), 3) == [Publish("BTCUSDT")]


def test_book_walking_out_of_the_snapshot_range_is_refetched():
    adapter = BinanceAdapter(["BTCUSDT"], snapshot_limit=5, depth=3, paranoid=True)
    adapter.on_open(0, 0)
    bids = [(str(100 - i), "1") for i in range(5)]
    asks = [(str(101 + i), "1") for i in range(5)]
    snapshot_synced(adapter, "BTCUSDT", 200, {}, snapshot(10, bids, asks), 1)
    # New levels beyond the snapshot are known (they were sent); they do not make it thin.
    assert adapter.on_message(0, depth("BTCUSDT", 11, 11, bids=[("90", "1")]), 2) == [Publish("BTCUSDT")]
    assert adapter.on_message(0, depth("BTCUSDT", 12, 12, bids=[("100", "0"), ("99", "0")]), 3) == [
        Publish("BTCUSDT")]
    actions = adapter.on_message(0, depth("BTCUSDT", 13, 13, bids=[("98", "0")]), 4)
    assert Stale("BTCUSDT", "thin") in actions  # only 97, 96 are vouched for: fewer than 3
    assert kinds(actions, FetchSnapshot)
    assert adapter.syncs["BTCUSDT"].stats.thin == 1


def test_a_whole_snapshot_is_never_thin():
    adapter = BinanceAdapter(["BTCUSDT"], snapshot_limit=100, depth=3)
    adapter.on_open(0, 0)
    snapshot_synced(adapter, "BTCUSDT", 200, {}, snapshot(10, [("100", "1")], [("101", "1")]), 1)
    assert adapter.on_message(0, depth("BTCUSDT", 11, 11, bids=[("100", "0")]), 2) == [Publish("BTCUSDT")]


# ------------------------------------------------------- waiting books, catching up


def test_a_waiting_book_keeps_raw_frames_and_only_the_last_while_queued():
    # Budget for one 1000-level snapshot: BTCUSDT's is in flight, ETHUSDT's waits in the queue.
    adapter = BinanceAdapter(["BTCUSDT", "ETHUSDT"], snapshot_limit=1000, rest_weight_max=50,
                             rest_reserve=0, paranoid=True)
    assert [a.symbol for a in kinds(adapter.on_open(0, 0), FetchSnapshot)] == ["BTCUSDT"]
    frames = {symbol: [depth(symbol, 10 + i, 10 + i, bids=[("99.0", str(i + 1))]) for i in range(100)]
              for symbol in ("BTCUSDT", "ETHUSDT")}
    for i in range(100):
        for symbol in frames:
            assert adapter.on_message(0, memoryview(frames[symbol][i]), 1) == []
    btc, eth = adapter.syncs["BTCUSDT"], adapter.syncs["ETHUSDT"]
    # bytes, copied (the message's memoryview is the connection's buffer), every one while in flight
    assert all(type(frame) is bytes for frame in btc.buffer)
    assert list(btc.buffer) == frames["BTCUSDT"]
    assert btc.buffer_bytes == sum(map(len, frames["BTCUSDT"]))
    # queued: only the last buffer_queued_max can matter to a snapshot that is not asked for yet
    assert list(eth.buffer) == frames["ETHUSDT"][-adapter.buffer_queued_max:]
    assert eth.buffer_bytes == sum(map(len, eth.buffer))
    assert snapshot_synced(adapter, "BTCUSDT", 200, {}, snapshot(49), 2) == [Publish("BTCUSDT")]
    assert adapter.books["BTCUSDT"].update_id == 109
    assert adapter.books["BTCUSDT"].levels(BID) == [(1000, 1), (990, 100)]
    assert not btc.buffer and btc.buffer_bytes == 0


def test_a_buffer_past_its_byte_bound_restarts():
    adapter = BinanceAdapter(["BTCUSDT"], paranoid=True)
    adapter.buffer_bytes_max = 2000
    adapter.on_open(0, 0)
    frame = depth("BTCUSDT", 1, 1, bids=[("99.0", "1")])
    n = 2000 // len(frame)
    for i in range(n + 1):
        adapter.on_message(0, depth("BTCUSDT", 1 + i, 1 + i, bids=[("99.0", "1")]), 1)
    sync = adapter.syncs["BTCUSDT"]
    assert sync.stats.overflows == 1
    assert len(sync.buffer) == 1 and sync.buffer_bytes <= adapter.buffer_bytes_max


def test_a_backlog_is_applied_a_chunk_per_turn_to_the_same_book():
    def synced(catch_up_bytes):
        adapter = BinanceAdapter(["BTCUSDT"], paranoid=True)
        adapter.catch_up_bytes = catch_up_bytes
        adapter.on_open(0, 0)
        for i in range(40):
            level = (str(99 - i % 7), str(i % 3))  # sets and deletes
            adapter.on_message(0, depth("BTCUSDT", 10 + 2 * i, 11 + 2 * i, bids=[level],
                                        asks=[(str(102 + i % 5), str(i % 4))]), 1)
        actions = adapter.on_snapshot("BTCUSDT", 200, {}, snapshot(30), 2)
        turns = 1
        while kinds(actions, CatchUp):
            assert actions == [CatchUp("BTCUSDT")]  # nothing published before it is caught up
            assert adapter.syncs["BTCUSDT"].state is State.AWAITING_SNAPSHOT
            # a frame arriving meanwhile queues behind the backlog
            if turns == 2:
                assert adapter.on_message(0, depth("BTCUSDT", 90, 90, bids=[("50.0", "5")]), 3) == []
            actions = adapter.on_catch_up("BTCUSDT", 3)
            turns += 1
        assert actions == [Publish("BTCUSDT")]
        return adapter.books["BTCUSDT"], turns

    chunked, turns = synced(400)
    whole, one = synced(1 << 20)
    assert turns > 3 and one == 2  # the snapshot's turn, then the whole backlog in one
    # at once, the frame that came "meanwhile" arrives after the book is live: same result
    assert whole.update_id == 89
    chunked_levels = (chunked.levels(BID), chunked.levels(ASK))
    assert chunked.update_id == 90
    assert (1000, 1) in chunked_levels[0] and (500, 5) in chunked_levels[0]
    assert chunked_levels[1] == whole.levels(ASK)
    assert [level for level in chunked_levels[0] if level[0] != 500] == whole.levels(BID)


def test_a_backlog_catches_up_with_a_stream_faster_than_a_chunk_a_turn():
    """Each turn more frames arrive than `catch_up_bytes`: a chunk also takes what arrived
    since the last, so the backlog still shrinks a chunk a turn and the book goes live (with
    a fixed chunk it never did: the ingest bench's books at 108k msg/s)."""
    adapter = BinanceAdapter(["BTCUSDT"], paranoid=True)
    adapter.catch_up_bytes = 400
    adapter.on_open(0, 0)
    next_id = 10

    def arrive(n):
        nonlocal next_id
        for _ in range(n):
            level = (str(99 - next_id % 7), str(next_id % 3))
            adapter.on_message(0, depth("BTCUSDT", next_id, next_id, bids=[level]), 1)
            next_id += 1

    arrive(40)
    sync = adapter.syncs["BTCUSDT"]
    backlog_bytes = sync.buffer_bytes
    actions = adapter.on_snapshot("BTCUSDT", 200, {}, snapshot(9), 2)
    turns = 0
    while kinds(actions, CatchUp):
        assert turns <= backlog_bytes // adapter.catch_up_bytes + 1, "the backlog did not shrink"
        arrive(6)                                  # more than a chunk's bytes each turn
        actions = adapter.on_catch_up("BTCUSDT", 3)
        turns += 1
    assert actions == [Publish("BTCUSDT")] and turns > 1
    assert adapter.books["BTCUSDT"].update_id == next_id - 1 and not sync.buffer


def test_limits_follow_the_depth():
    assert BinanceAdapter(["BTCUSDT"], depth=50).scheduler.limit_pref == 500
    assert BinanceAdapter(["BTCUSDT"], depth=50).scheduler.limit_min == 100
    assert BinanceAdapter(["BTCUSDT"], depth=1000).scheduler.limit_min == 5000
    futures = BinanceFuturesAdapter(["BTCUSDT"], depth=10).scheduler
    assert (futures.limit_min, futures.weight_min, futures.limit_pref) == (50, 2, 100)
    adapter = BinanceAdapter(["BTCUSDT"], depth=50)
    (fetch,) = kinds(adapter.on_open(0, 0), FetchSnapshot)
    assert fetch.url.endswith("&limit=500")
