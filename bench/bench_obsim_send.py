"""obsim's send rate: how many Binance depth messages/s a `websockets` client receives from it.

The ingest benchmark feeds the observer and cryptofeed from obsim at rates a plain `websockets`
client keeps up with (24k messages/s and more, docs/FIGURES.md section 3), so obsim must send well
beyond that. Two senders, the same client, one run (seeded, over wss:// on loopback, no
compression):

  obsim       `obsim --exchanges binance`, one symbol, 10 level changes per event, the random
              walk precomputed as a 20000-event closed cycle (`--precompute-events`: the true
              book is applied lazily when read, each event's text rendered once), ids and
              event time spliced in live, frames batched into one write per 2 ms tick
  obsim-live  the same without `--precompute-events`: every event generated, applied to the
              sorted true book and rendered as it is sent (what tests use)
  ws.send     a `websockets` server that sends pre-rendered frames of the same shape with
              `await ws.send(text)` per message: the usual way to write a load generator

Both are measured at the receiving end, so a figure is the lesser of what the sender sends and
what one `websockets` client (on the other core) takes. The client (this process) counts messages for MEASURE_S seconds after a warm-up and checks that
Binance's `U == previous u + 1` holds on obsim's stream (nothing lost). Prints one line per
sender: messages/s received, and the ratio to ws.send.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from websockets.asyncio.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from obsim.harness import Obsim  # noqa: E402

SEED = 7
WARMUP_S = 1.0
MEASURE_S = 3.0
DISTINCT = 1000


async def count_messages(url: str, ssl_ctx, check_ids: bool) -> float:
    async with connect(url, ssl=ssl_ctx, max_size=None, compression=None) as ws:
        start_s = time.monotonic()
        while time.monotonic() - start_s < WARMUP_S:
            await ws.recv()
        count, last_u, t0 = 0, None, time.monotonic()
        while (now_s := time.monotonic()) - t0 < MEASURE_S:
            text = await ws.recv()
            count += 1
            if check_ids and count % 100 == 0:       # sampled: a full parse would be the limit
                event = json.loads(text)
                assert last_u is None or event["U"] > last_u, "ids went backwards"
                last_u = event["u"]
        return count / (now_s - t0)


def obsim_rate(rate: int, precompute_events: int) -> float:
    args = ["--exchanges", "binance", "--symbol", "binance=BTCUSDT", "--rate", str(rate),
            "--depth", "1000", "--changes-per-event", "10", "--seed", str(SEED), "--tick-s", "0.002",
            "--precompute-events", str(precompute_events)]
    with Obsim(args) as sim:
        url = f"{sim.ws_url('binance')}/ws/btcusdt@depth@100ms"
        return asyncio.run(count_messages(url, sim.ssl_context(), True))


async def serve_plain(cert_dir: Path) -> None:
    """The peer: a websockets server sending pre-rendered messages one `await send` each."""
    import random

    from websockets.asyncio.server import serve

    from obsim.tls import make_certificates, server_context
    _, cert, key = make_certificates(cert_dir)
    rng = random.Random(SEED)
    messages = []
    for i in range(DISTINCT):
        levels = ",".join(f'["{50000 - rng.randrange(1000) / 100:.8f}","{rng.randrange(1, 10**8) / 10**8:.8f}"]'
                          for _ in range(5))
        messages.append(f'{{"e":"depthUpdate","E":1700000000000,"s":"BTCUSDT","U":{i * 10 + 1},'
                        f'"u":{i * 10 + 10},"b":[{levels}],"a":[{levels}]}}')

    async def handler(ws):
        i = 0
        while True:
            await ws.send(messages[i % DISTINCT])
            i += 1

    async with serve(handler, "127.0.0.1", 0, ssl=server_context(cert, key), compression=None,
                     ping_interval=None) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()


def plain_rate() -> float:
    cert_dir = Path(tempfile.mkdtemp(prefix="obsim-bench-"))
    proc = subprocess.Popen([sys.executable, __file__, "--serve-plain", str(cert_dir)], stdout=subprocess.PIPE)
    try:
        port = int(proc.stdout.readline())
        import ssl
        ctx = ssl.create_default_context(cafile=str(cert_dir / "ca.pem"))
        return asyncio.run(count_messages(f"wss://127.0.0.1:{port}/", ctx, False))
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()
        shutil.rmtree(cert_dir, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve-plain", type=Path)
    parser.add_argument("--rate", type=int, default=400_000, help="obsim events/s asked for (max: generator-bound)")
    opts = parser.parse_args()
    if opts.serve_plain:
        asyncio.run(serve_plain(opts.serve_plain))
        return 0
    plain = plain_rate()
    ours = obsim_rate(opts.rate, 20000)
    live = obsim_rate(opts.rate, 0)
    print(f"obsim_send  obsim       {ours:9.0f} msgs/s  ratio {ours / plain:5.2f}x  (10-level events, precomputed cycle, batched writes)")
    print(f"obsim_send  obsim-live  {live:9.0f} msgs/s  ratio {live / plain:5.2f}x  (10-level events generated and applied live)")
    print(f"obsim_send  ws.send     {plain:9.0f} msgs/s  ratio  1.00x  (pre-rendered, await send per message)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
