"""The cryptofeed half of bench/ingest.py: one run against obsim, its results in a JSON file.

Run by ingest.py in an interpreter that has cryptofeed 2.4.1 (this project never depends on it:
`pip install cryptofeed==2.4.1` in any venv, then `ingest.py --cryptofeed-python PATH`). It
imports only the standard library, cryptofeed and (if present) uvloop, never the project.

cryptofeed takes `wss://` addresses only, so a `Binance` subclass points its WebSocket and REST
endpoints at obsim; the WebSocket trusts obsim's CA through the endpoint options, and the REST
side (requests for exchangeInfo, aiohttp for the depth snapshot) through REQUESTS_CA_BUNDLE and
SSL_CERT_FILE, set by the parent. Book checks are on (`cross_check=True`); the depth is the
default (full book, 1000-level REST snapshot), because `max_depth=10` asks for a 10-level
snapshot and publishes wrong tops (docs/FIGURES.md section 2).

Measured per L2_BOOK callback for `measure_s`, after a warm-up that ends at the first callback
less than `caught_up_s` behind (after `warmup_min_s`, at the latest at `warmup_max_s`): the
count, and the latency `time.time() - book.timestamp` (obsim stamps its send time into
Binance's `E`, in ms), and the window itself in CLOCK_MONOTONIC seconds (the parent reads
obsim's sent count over it).

The results go to `result_path`, a plain file written and closed before the process exits, not
to stdout: a pipe's end is not ours to trust here (a run once lost the tail of a 720,896-byte
result line, the exit racing a partial write), and a file has no such limit.

    ingest_cryptofeed.py '{"ws_url":..., "rest_url":..., "ca_file":..., "symbols":[...],
                          "warmup_min_s":1, "warmup_max_s":10, "caught_up_s":0.05,
                          "measure_s":3, "core":0, "result_path":...}'
"""

import asyncio
import json
import os
import ssl
import sys
import time


def main():
    if len(sys.argv) != 2:             # `make bench` runs every script: this one is a helper
        print("ingest_cryptofeed.py: run by bench/ingest.py (one JSON argument); nothing to do")
        return
    params = json.loads(sys.argv[1])
    if params.get("core") is not None:
        os.sched_setaffinity(0, {params["core"]})
    from cryptofeed import FeedHandler
    from cryptofeed.connection import RestEndpoint, Routes, WebsocketEndpoint
    from cryptofeed.defines import L2_BOOK
    from cryptofeed.exchanges import Binance

    ssl_ctx = ssl.create_default_context(cafile=params["ca_file"])

    class ObsimBinance(Binance):
        websocket_endpoints = [WebsocketEndpoint(params["ws_url"], options={"ssl": ssl_ctx, "compression": None})]
        rest_endpoints = [RestEndpoint(params["rest_url"], routes=Routes(
            "/api/v3/exchangeInfo", l2book="/api/v3/depth?symbol={}&limit={}"))]

    result = {"count": 0, "latencies_s": []}
    started_s = time.monotonic()
    state = {"measure_end_s": None}

    def start_measuring(now_s):
        state["measure_start_s"] = now_s
        state["measure_end_s"] = now_s + params["measure_s"]

    async def on_book(book, receipt_timestamp):
        now = time.time()
        if not book.timestamp:
            return
        now_s = time.monotonic()
        if state["measure_end_s"] is None:    # warm-up: until caught up, as for the observer
            if now_s - started_s >= params["warmup_min_s"] and now - book.timestamp < params["caught_up_s"]:
                start_measuring(now_s)
            return
        if now_s < state["measure_end_s"]:
            result["count"] += 1
            result["latencies_s"].append(now - book.timestamp)

    async def watch():
        while True:
            now_s = time.monotonic()
            if state["measure_end_s"] is None and now_s - started_s >= params["warmup_max_s"]:
                start_measuring(now_s)
            if state["measure_end_s"] is not None and now_s >= state["measure_end_s"]:
                asyncio.get_running_loop().stop()
                return
            await asyncio.sleep(0.05)

    try:
        import uvloop
        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    handler = FeedHandler(config={"log": {"disabled": True}})
    symbols = [f"{s[:-4]}-{s[-4:]}" for s in params["symbols"]]     # BTCUSDT -> BTC-USDT
    handler.add_feed(ObsimBinance(symbols=symbols, channels=[L2_BOOK], callbacks={L2_BOOK: on_book},
                                  cross_check=True))
    loop.create_task(watch())
    handler.run(install_signal_handlers=False)
    lat = sorted(result["latencies_s"])
    out = {"count": result["count"], "measure_s": params["measure_s"],
           "window_s": [state["measure_start_s"], state["measure_end_s"]],
           "latencies_s": lat[:: max(1, len(lat) // 20000)]}
    partial = params["result_path"] + ".partial"
    with open(partial, "w", encoding="utf-8") as f:
        json.dump(out, f)
    os.replace(partial, params["result_path"])    # whole or absent, never cut
    os._exit(0)    # cryptofeed's connections and tasks need not unwind: the numbers are out


if __name__ == "__main__":
    main()
