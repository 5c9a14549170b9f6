"""obsim --send-stamps: every Bybit stream message the client gets has its send stamp, in
CLOCK_REALTIME ns, taken before the client received it (obsim/stamps.py)."""

from __future__ import annotations

import json
import os
import tempfile
import time

from obsim.harness import Obsim
from obsim.stamps import RECORD, read_stamps

from .simkit import open_ws, recv_json, run

DELTAS_N = 50


def test_every_bybit_delta_has_a_send_stamp_before_its_receipt():
    workdir = tempfile.mkdtemp(prefix="obsim-stamps-")
    path = os.path.join(workdir, "stamps.bin")
    try:
        start_ns = time.time_ns()
        with Obsim(["--exchanges", "bybit", "--rate", "200", "--depth", "80",
                    "--send-stamps", path]) as sim:
            received = run(_deltas(sim))
        stamps = read_stamps(path)
        assert os.path.getsize(path) % RECORD.size == 0
    finally:
        for name in os.listdir(workdir):
            os.unlink(os.path.join(workdir, name))
        os.rmdir(workdir)
    assert len(received) == DELTAS_N
    for symbol, u, recv_ns in received:
        send_ns = stamps[(symbol, u)]
        assert start_ns <= send_ns <= recv_ns


async def _deltas(sim) -> list[tuple[str, int, int]]:
    out = []
    async with await open_ws(sim, sim.ws_url("bybit")) as ws:
        await ws.send(json.dumps({"req_id": "r1", "op": "subscribe",
                                  "args": ["orderbook.50.BTCUSDT"]}))
        while len(out) < DELTAS_N:
            msg = await recv_json(ws)
            if msg.get("type") == "delta":
                out.append((msg["data"]["s"], msg["data"]["u"], time.time_ns()))
    return out
