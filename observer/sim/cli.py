"""`obsim`: command line, start-up line, clean exit.

obsim binds 127.0.0.1 on free ports (one per venue, one for control), makes its TLS
certificate in a private temporary directory, and prints exactly one JSON line on stdout:

  {"exchanges": {"binance": {"ws_url": ..., "rest_url": ..., "symbols": [...]}, ...},
   "ca_file": ..., "control_url": ..., "pid": ...}

then serves until SIGTERM or SIGINT (or, with `--exit-on-stdin-eof`, until its stdin closes),
when it closes every connection, removes its temporary directory and exits 0. Logs go to
stderr. Every exchange limit has a flag with the real value
as default, so tests can scale time down (e.g. `--okx-idle-s 1`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import orjson

from observer.sim import replay as replay_mod
from observer.sim.binance import BinanceFutures, BinanceSpot
from observer.sim.bybit import BybitLinear, BybitSpot
from observer.sim.coinbase import Coinbase
from observer.sim.kraken import Kraken
from observer.sim.okx import Okx
from observer.sim.server import Sim
from observer.sim.tls import make_certificates, server_context
from observer.sim.wire import SEND_BYTES_MAX_DEFAULT

VENUES = {
    "binance": BinanceSpot, "binance-futures": BinanceFutures, "coinbase": Coinbase,
    "kraken": Kraken, "okx": Okx, "bybit": BybitSpot, "bybit-linear": BybitLinear,
}
DEFAULT_SYMBOLS = {
    "binance": ["BTCUSDT", "ETHUSDT"], "binance-futures": ["BTCUSDT", "ETHUSDT"],
    "coinbase": ["BTC-USD", "ETH-USD"], "kraken": ["BTC/USD", "ETH/USD"],
    "okx": ["BTC-USDT", "ETH-USDT"], "bybit": ["BTCUSDT", "ETHUSDT"], "bybit-linear": ["BTCUSDT", "ETHUSDT"],
}
REPLAY_FILE_OF = {"bybit-linear": "bybit"}


def native_symbol(exchange: str, base: str, quote: str) -> str:
    if exchange == "kraken":
        return f"{base}/{quote}"
    if exchange in ("coinbase", "okx"):
        return f"{base}-{quote}"
    return f"{base}{quote}"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="obsim", description="Loopback exchange simulator (wss + https).")
    a = p.add_argument
    a("--exchanges", default=",".join(VENUES), help="comma list of " + ", ".join(VENUES))
    a("--symbols", default="", help="BASE/QUOTE list for every exchange, e.g. BTC/USD,ETH/USD")
    a("--symbol", action="append", default=[], metavar="EXCHANGE=SYM,SYM",
      help="native symbols for one exchange (repeatable), e.g. kraken=BTC/USD")
    a("--rate", type=float, default=10.0, help="events per second per symbol")
    a("--depth", type=int, default=100, help="levels per side of each true book")
    a("--seed", type=int, default=1)
    a("--precompute-events", type=int, default=0,
      help="Binance: compute N random-walk events ahead as a repeating cycle (fast path for benchmarks)")
    a("--changes-per-event", type=int, default=0, help="level changes per random-walk event (0: 1-3)")
    a("--source", choices=("random", "replay"), default="random")
    a("--recordings", type=Path, help="directory of recorded traffic (for --source replay)")
    a("--start-paused", action="store_true", help="streams start paused (resume via the control API)")
    a("--tick-s", type=float, default=0.005)
    a("--send-bytes-max", type=int, default=SEND_BYTES_MAX_DEFAULT)
    a("--client-message-bytes-max", type=int, default=1 << 20)
    a("--fault", action="append", default=[], metavar="EXCHANGE:KIND[:k=v,...]",
      help="inject at start (at_s=seconds after start, default 0), e.g. kraken:bad_checksum:at_s=1")
    a("--log-level", default="WARNING")
    a("--tmp-dir", type=Path, help="where to make the private temporary directory (default: the system's)")
    a("--exit-on-stdin-eof", action="store_true",
      help="also stop when stdin closes (the harness uses this so obsim never outlives its test)")
    for prefix, inbound, ping_s, pong_s, weight in (("binance", 5, 20, 60, 6000),
                                                   ("binance-futures", 10, 180, 600, 2400)):
        a(f"--{prefix}-inbound-per-s", type=int, default=inbound)
        a(f"--{prefix}-ping-interval-s", type=float, default=ping_s)
        a(f"--{prefix}-pong-timeout-s", type=float, default=pong_s)
        a(f"--{prefix}-lifetime-s", type=float, default=86400.0)
        a(f"--{prefix}-rest-weight-max", type=int, default=weight)
    a("--binance-ban-s", type=float, default=120.0)
    a("--binance-streams-max", type=int, default=1024, help="streams per connection")
    for name, attempts, per in (("binance", 300, "5 min"), ("binance-futures", 300, "5 min"), ("coinbase", 8, "1 s"),
                                ("kraken", 0, "1 s"), ("okx", 3, "1 s"), ("bybit", 500, "5 min"),
                                ("bybit-linear", 500, "5 min")):
        a(f"--{name}-connects-max", type=int, default=attempts,
          help=f"connection attempts per {per} before a 429 (0: unlimited)")
    a("--coinbase-subscribe-deadline-s", type=float, default=5.0)
    a("--coinbase-idle-s", type=float, default=60.0, help="close channels idle this long without heartbeats")
    a("--coinbase-depth", type=int, default=12000, help="levels per side (12000 makes a ~2.5 MB snapshot)")
    a("--coinbase-l2-products-max", type=int, default=16)
    a("--coinbase-heartbeat-s", type=float, default=1.0)
    a("--kraken-heartbeat-s", type=float, default=1.0)
    a("--okx-idle-s", type=float, default=30.0)
    a("--okx-keepalive-s", type=float, default=60.0, help="empty update after this long without changes")
    a("--okx-checksum", choices=("zero", "legacy"), default="zero")
    a("--okx-subscribes-per-hour-max", type=int, default=480)
    a("--bybit-idle-s", type=float, default=600.0)
    a("--bybit-level1-repush-s", type=float, default=3.0)
    return p


def symbols_by_exchange(opts, names: list[str]) -> dict[str, list[str]]:
    out = {name: list(DEFAULT_SYMBOLS[name]) for name in names}
    if opts.symbols:
        pairs = [s.strip().upper().partition("/") for s in opts.symbols.split(",") if s.strip()]
        for name in names:
            out[name] = [native_symbol(name, base, quote) for base, _, quote in pairs]
    for item in opts.symbol:
        name, _, syms = item.partition("=")
        if name not in out:
            raise SystemExit(f"obsim: --symbol names exchange {name!r} that is not served")
        out[name] = [s.strip() for s in syms.split(",") if s.strip()]
    return out


def build_venues(opts) -> dict:
    names = [n.strip() for n in opts.exchanges.split(",") if n.strip()]
    unknown = [n for n in names if n not in VENUES]
    if unknown:
        raise SystemExit(f"obsim: unknown exchange {unknown[0]!r}; known: {', '.join(VENUES)}")
    symbols = symbols_by_exchange(opts, names)
    venues = {}
    for name in names:
        recorded = None
        if opts.source == "replay":
            if opts.recordings is None:
                raise SystemExit("obsim: --source replay needs --recordings DIR")
            recorded = replay_mod.load(REPLAY_FILE_OF.get(name, name), opts.recordings)
            symbols[name] = list(recorded)
        venues[name] = VENUES[name](opts, symbols[name], recorded)
        venues[name].paused = opts.start_paused
    return venues


def parse_fault(text: str) -> tuple[str, str, dict]:
    exchange, _, rest = text.partition(":")
    kind, _, params_text = rest.partition(":")
    params = dict(item.partition("=")[::2] for item in params_text.split(",") if item)
    if not exchange or not kind:
        raise SystemExit(f"obsim: --fault {text!r} is not EXCHANGE:KIND[:k=v,...]")
    return exchange, kind, params


def schedule_faults(sim: Sim, specs: list[str]) -> None:
    loop = asyncio.get_running_loop()
    for spec in specs:
        exchange, kind, params = parse_fault(spec)
        venue = sim.venues.get(exchange)
        if venue is None:
            raise SystemExit(f"obsim: --fault names exchange {exchange!r} that is not served")
        at_s = float(params.pop("at_s", 0))
        symbol = params.pop("symbol", None)
        loop.call_later(at_s, venue.inject, kind, symbol, params)


def watch_stdin(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Stop when stdin reaches EOF: the parent that holds the other end has gone."""
    fd = sys.stdin.fileno()
    os.set_blocking(fd, False)

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        if not data:
            loop.remove_reader(fd)
            stop.set()
    loop.add_reader(fd, readable)


async def amain(opts, workdir: Path) -> None:
    stop = asyncio.Event()                     # signals first: a stop during start-up still cleans up
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if opts.exit_on_stdin_eof:
        watch_stdin(loop, stop)
    venues = build_venues(opts)
    ca_path, cert_path, key_path = make_certificates(workdir)
    sim = Sim(opts, venues, server_context(cert_path, key_path), str(ca_path))
    await sim.start()
    schedule_faults(sim, opts.fault)
    sys.stdout.write(orjson.dumps(sim.endpoints()).decode() + "\n")
    sys.stdout.flush()
    await stop.wait()
    await sim.close()


def main(argv: list[str] | None = None) -> int:
    opts = parser().parse_args(argv)
    logging.basicConfig(level=opts.log_level.upper(), stream=sys.stderr,
                        format="obsim %(levelname)s %(name)s: %(message)s")
    workdir = Path(tempfile.mkdtemp(prefix="obsim-", dir=opts.tmp_dir))
    try:
        asyncio.run(amain(opts, workdir))
    except KeyboardInterrupt:
        pass
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
