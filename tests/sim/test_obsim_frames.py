"""obsim's precomputed frames (`--precompute-events`, obsim/framecycle.py): the same stream as
message by message, checked by the independent client of test_obsim_binance.py."""

from __future__ import annotations

import time

import numpy as np
import pytest

from obsim.framecycle import ID_FIRST, FrameCycle, span_ids
from obsim.harness import Obsim
from obsim.wire import text_frame

from .simkit import open_ws, recv_json, run, wait_for
from .test_obsim_binance import sync_and_compare
from .test_obsim_binance import (
    test_gap_fault_is_seen_and_a_resync_rebuilds_the_book as gap_fault_is_seen_and_resynced)

CYCLE_EVENTS = 40           # small, so the stream laps the cycle many times in a test
ARGS = ["--exchanges", "binance", "--rate", "1000", "--depth", "60", "--precompute-events",
        str(CYCLE_EVENTS), "--changes-per-event", "4", "--binance-rest-weight-max", "100000"]


@pytest.fixture(scope="module")
def sim():
    with Obsim(ARGS) as sim:
        yield sim


def render(index: int, first: int, last: int, event_ts: int) -> bytes:
    levels = ",".join(f'["{index}.5","0.{n}"]' for n in range(index % 3 + 1))
    return (b'{"stream":"x@depth","data":{"e":"depthUpdate","E":%d,"s":"X","U":%d,"u":%d,"b":[%s]}}'
            % (event_ts, first, last, levels.encode()))


def test_taken_frames_are_byte_for_byte_the_rendered_frames():
    widths = np.array([1, 3, 2, 5, 1, 4], np.int64)
    cycle = FrameCycle(len(widths), render, micros=False)
    prev_u, event_ts = ID_FIRST + 17, 1_765_000_000_123
    for start, stop in ((0, 6), (2, 5), (0, 1), (5, 6)):       # whole, middle, ends
        first, last = span_ids(widths, start, stop, prev_u)
        expected = b"".join(text_frame(render(i, int(first[i - start]), int(last[i - start]), event_ts))
                            for i in range(start, stop))
        assert cycle.take(start, stop, first, last, event_ts) == expected
        assert int(first[0]) == prev_u + 1
        prev_u, event_ts = int(last[-1]), event_ts + 7


def test_frames_across_many_laps_rebuild_the_true_book(sim):
    run(wait_for(lambda: sim.book("binance", "BTCUSDT", 1)["events"] > 3 * CYCLE_EVENTS))
    sync = run(sync_and_compare(sim, "binance", "BTCUSDT"))
    assert sync.gaps == 0


def test_a_gap_fault_on_precomputed_frames_is_seen_and_resynced(sim):
    gap_fault_is_seen_and_resynced(sim)        # the same case as message by message


def test_raw_stream_in_microseconds_carries_the_send_time(sim):
    async def scenario():
        url = f"{sim.ws_url('binance')}/ws/btcusdt@depth?timeUnit=MICROSECOND"
        async with await open_ws(sim, url) as ws:
            before_us = time.time_ns() // 1000
            events = [await recv_json(ws) for _ in range(3 * CYCLE_EVENTS)]
            after_us = time.time_ns() // 1000
        for previous, event in zip(events, events[1:]):
            assert event["U"] == previous["u"] + 1
        assert all(before_us - 1_000_000 <= e["E"] <= after_us for e in events)
    run(scenario())
