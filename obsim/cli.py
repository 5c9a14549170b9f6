"""`obsim`: command line, start-up line, clean exit.

obsim binds 127.0.0.1 on free ports (one per venue, one for control), makes its TLS
certificate in a private temporary directory, and prints exactly one JSON line on stdout:

  {"exchanges": {"binance": {"ws_url": ..., "rest_url": ..., "symbols": [...]}, ...},
   "ca_file": ..., "control_url": ..., "pid": ...}

and, with `--write-config PATH`, writes an observer configuration file with one `[[feed]]` per
served exchange (its symbols, ws_url, rest_url where the observer uses REST, ca_file), which
`observer --config PATH` runs as is for as long as obsim serves (the CA file is obsim's);
then serves until SIGTERM or SIGINT (or, with `--exit-on-stdin-eof`, until its stdin closes),
when it closes every connection, removes its temporary directory and exits 0. Logs go to
stderr. Every exchange limit has a flag with the real value
as default, so tests can scale time down (e.g. `--okx-idle-s 1`).

A command line obsim cannot use is one line on stderr and exit 2, before anything is made:
every number has a kind and a range (`--rate nan` or `--tick-s 0` would break the stream
loop much later), names and faults are checked against what is served, and argparse's own
errors come without the usage dump.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import orjson

from obsim import replay as replay_mod
from obsim.binance import BinanceFutures, BinanceSpot
from obsim.bybit import BybitLinear, BybitSpot
from obsim.coinbase import Coinbase
from obsim.kraken import Kraken
from obsim.okx import Okx
from obsim.server import Sim
from obsim.stamps import StampLog
from obsim.tls import make_certificates, server_context
from obsim.wire import SEND_BYTES_MAX_DEFAULT

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
OBSERVER_NAME = "obsim"         # the observer instance a written config names


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
LEVELS_MAX = 100_000            # levels per side of a true book (memory: about 100 B each)
PRECOMPUTE_EVENTS_MAX = 10_000_000
FAULT_AT_S_MAX = 86_400.0


class UsageError(Exception):
    """A command line obsim cannot use: one line on stderr, exit 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(message.removeprefix("argument "))


def _number(kind, lo, hi=math.inf, *, above: bool = False):
    """An argparse type: a finite `kind` in [lo, hi] (lo excluded when `above`)."""
    what = (f"{'a number' if kind is float else 'an integer'} {'>' if above else '>='} {lo}"
            + (f" and <= {hi}" if hi != math.inf else ""))

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not math.isfinite(value) or value < lo or value > hi or (above and value == lo):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value
    return parse


SECONDS = _number(float, 0.0, above=True)
COUNT = _number(int, 0)
AT_LEAST_1 = _number(int, 1)


def native_symbol(exchange: str, base: str, quote: str) -> str:
    if exchange == "kraken":
        return f"{base}/{quote}"
    if exchange in ("coinbase", "okx"):
        return f"{base}-{quote}"
    return f"{base}{quote}"


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="obsim", description="Loopback exchange simulator (wss + https).",
                allow_abbrev=False)
    a = p.add_argument
    a("--exchanges", default=",".join(VENUES), help="comma list of " + ", ".join(VENUES))
    a("--symbols", default="", help="BASE/QUOTE list for every exchange, e.g. BTC/USD,ETH/USD")
    a("--symbol", action="append", default=[], metavar="EXCHANGE=SYM,SYM",
      help="native symbols for one exchange (repeatable), e.g. kraken=BTC/USD")
    a("--rate", type=_number(float, 0.0), default=10.0, help="events per second per symbol")
    a("--depth", type=_number(int, 1, LEVELS_MAX), default=100, help="levels per side of each true book")
    a("--seed", type=COUNT, default=1)
    a("--precompute-events", type=_number(int, 0, PRECOMPUTE_EVENTS_MAX), default=0,
      help="Binance: compute N random-walk events ahead as a repeating cycle (fast path for benchmarks)")
    a("--changes-per-event", type=COUNT, default=0, help="level changes per random-walk event (0: 1-3)")
    a("--source", choices=("random", "replay"), default="random")
    a("--recordings", type=Path, help="directory of recorded traffic (for --source replay)")
    a("--start-paused", action="store_true", help="streams start paused (resume via the control API)")
    a("--tick-s", type=SECONDS, default=0.005)
    a("--send-bytes-max", type=AT_LEAST_1, default=SEND_BYTES_MAX_DEFAULT)
    a("--client-message-bytes-max", type=AT_LEAST_1, default=1 << 20)
    a("--fault", action="append", default=[], metavar="EXCHANGE:KIND[:k=v,...]",
      help="inject at start (at_s=seconds after start, default 0), e.g. kraken:bad_checksum:at_s=1")
    a("--log-level", type=str.upper, choices=LOG_LEVELS, default="WARNING")
    a("--tmp-dir", type=Path, help="where to make the private temporary directory (default: the system's)")
    a("--write-config", type=Path, metavar="PATH",
      help="also write an observer config file for what is served (run it with "
           "`observer --config PATH` while obsim runs: its CA file lives as long as obsim)")
    a("--version", action="version", version=_version_text())
    a("--send-stamps", type=Path, metavar="FILE",
      help="append (symbol, update id, CLOCK_REALTIME ns) of every Bybit stream message as it is "
           "written, 32-byte records (obsim/stamps.py), for feed-to-client latency")
    a("--exit-on-stdin-eof", action="store_true",
      help="also stop when stdin closes (the harness uses this so obsim never outlives its test)")
    for prefix, inbound, ping_s, pong_s, weight in (("binance", 5, 20, 60, 6000),
                                                   ("binance-futures", 10, 180, 600, 2400)):
        a(f"--{prefix}-inbound-per-s", type=COUNT, default=inbound)
        a(f"--{prefix}-ping-interval-s", type=SECONDS, default=ping_s)
        a(f"--{prefix}-pong-timeout-s", type=SECONDS, default=pong_s)
        a(f"--{prefix}-lifetime-s", type=SECONDS, default=86400.0)
        a(f"--{prefix}-rest-weight-max", type=COUNT, default=weight)
        a(f"--{prefix}-rest-window-s", type=SECONDS, default=60.0,
          help="the REST weight window (a sliding minute; shorter scales time in tests)")
    a("--binance-ban-s", type=_number(float, 0.0), default=120.0)
    a("--binance-retry-grace-s", type=_number(float, 0.0), default=1.0,
      help="requests arriving this soon after a 429 were already on their way: 429, not a ban")
    a("--binance-streams-max", type=AT_LEAST_1, default=1024, help="streams per connection")
    for name, attempts, per in (("binance", 300, "5 min"), ("binance-futures", 300, "5 min"), ("coinbase", 8, "1 s"),
                                ("kraken", 0, "1 s"), ("okx", 3, "1 s"), ("bybit", 500, "5 min"),
                                ("bybit-linear", 500, "5 min")):
        a(f"--{name}-connects-max", type=COUNT, default=attempts,
          help=f"connection attempts per {per} before a 429 (0: unlimited)")
    a("--coinbase-subscribe-deadline-s", type=SECONDS, default=5.0)
    a("--coinbase-idle-s", type=SECONDS, default=60.0, help="close channels idle this long without heartbeats")
    a("--coinbase-depth", type=_number(int, 1, LEVELS_MAX), default=12000,
      help="levels per side (12000 makes a ~2.5 MB snapshot)")
    a("--coinbase-l2-products-max", type=AT_LEAST_1, default=16)
    a("--coinbase-heartbeat-s", type=SECONDS, default=1.0)
    a("--kraken-heartbeat-s", type=SECONDS, default=1.0)
    a("--okx-idle-s", type=SECONDS, default=30.0)
    a("--okx-keepalive-s", type=SECONDS, default=60.0, help="empty update after this long without changes")
    a("--okx-checksum", choices=("zero", "legacy"), default="zero")
    a("--okx-subscribes-per-hour-max", type=COUNT, default=480)
    a("--bybit-idle-s", type=SECONDS, default=600.0)
    a("--bybit-level1-repush-s", type=SECONDS, default=3.0)
    return p


def symbols_by_exchange(opts, names: list[str]) -> dict[str, list[str]]:
    out = {name: list(DEFAULT_SYMBOLS[name]) for name in names}
    if opts.symbols:
        pairs = [s.strip().upper().partition("/") for s in opts.symbols.split(",")]
        bad = [f"{b}{sep}{q}" for b, sep, q in pairs if not (b.strip() and sep and q.strip())]
        if bad:
            raise UsageError(f"--symbols: {bad[0]!r} is not BASE/QUOTE")
        for name in names:
            out[name] = [native_symbol(name, base.strip(), quote.strip()) for base, _, quote in pairs]
    for item in opts.symbol:
        name, sep, syms = item.partition("=")
        symbols = [s.strip() for s in syms.split(",")]
        if not sep or not all(symbols):
            raise UsageError(f"--symbol {item!r}: expected EXCHANGE=SYM[,SYM...]")
        if name not in out:
            raise UsageError(f"--symbol names exchange {name!r} that is not served")
        out[name] = symbols
    return out


class Plan:
    """What the command line asks for, checked before anything is made."""

    def __init__(self, names: list[str], symbols: dict, recorded: dict, faults: list):
        self.names, self.symbols, self.recorded, self.faults = names, symbols, recorded, faults


def prepare(opts) -> Plan:
    """Check the command line against what obsim serves; UsageError (exit 2) otherwise."""
    names = [n.strip() for n in opts.exchanges.split(",")]
    unknown = [n for n in names if n not in VENUES]
    if unknown:
        raise UsageError(f"unknown exchange {unknown[0]!r}; known: {', '.join(VENUES)}")
    if len(set(names)) != len(names):
        raise UsageError(f"--exchanges {opts.exchanges!r} names an exchange twice")
    if opts.write_config is not None and not opts.write_config.parent.is_dir():
        raise UsageError(f"--write-config {str(opts.write_config)!r}: no such directory "
                         f"{str(opts.write_config.parent)!r}")
    if opts.tmp_dir is not None and not opts.tmp_dir.is_dir():
        raise UsageError(f"--tmp-dir {str(opts.tmp_dir)!r} is not a directory")
    symbols = symbols_by_exchange(opts, names)
    recorded = {}
    if opts.source == "replay":
        if opts.recordings is None:
            raise UsageError("--source replay needs --recordings DIR")
        for name in names:
            try:
                recorded[name] = replay_mod.load(REPLAY_FILE_OF.get(name, name), opts.recordings)
            except (OSError, ValueError) as exc:
                raise UsageError(f"--recordings {str(opts.recordings)!r}: {exc}") from None
            symbols[name] = list(recorded[name])
    return Plan(names, symbols, recorded, [parse_fault(text, symbols) for text in opts.fault])


def build_venues(opts, plan: Plan) -> dict:
    venues = {}
    for name in plan.names:
        venues[name] = VENUES[name](opts, plan.symbols[name], plan.recorded.get(name))
        venues[name].paused = opts.start_paused
    return venues


FAULT_NUMBERS = {"count": _number(int, 1), "duration_s": _number(float, 0.0, 3600.0, above=True),
                 "size_bytes": _number(float, 0.0), "fragment_bytes": _number(float, 0.0),
                 "retry_after_s": _number(float, 0.0), "timeout_s": _number(float, 0.0)}


def parse_fault(text: str, symbols: dict) -> tuple[str, str, str | None, float, dict]:
    """`EXCHANGE:KIND[:k=v,...]` -> (exchange, kind, symbol, at_s, params), checked."""
    exchange, _, rest = text.partition(":")
    kind, _, params_text = rest.partition(":")
    if not exchange or not kind:
        raise UsageError(f"--fault {text!r} is not EXCHANGE:KIND[:k=v,...]")
    if exchange not in symbols:
        raise UsageError(f"--fault names exchange {exchange!r} that is not served")
    if kind not in VENUES[exchange].faults:
        raise UsageError(f"--fault {text!r}: {exchange} has no fault {kind!r}; it has "
                         f"{', '.join(VENUES[exchange].faults)}")
    params: dict[str, str] = {}
    for item in params_text.split(",") if params_text else ():
        key, sep, value = item.partition("=")
        if not key or not sep or key in params:
            raise UsageError(f"--fault {text!r}: {item!r} is not a new k=v")
        params[key] = value
    try:
        at_s = _number(float, 0.0, FAULT_AT_S_MAX)(params.pop("at_s", "0"))
        for key, kind_of in FAULT_NUMBERS.items():
            if key in params:
                kind_of(params[key])
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"--fault {text!r}: {exc}") from None
    symbol = params.pop("symbol", None)
    if symbol is not None and symbol not in symbols[exchange]:
        raise UsageError(f"--fault {text!r}: {exchange} serves no symbol {symbol!r}")
    return exchange, kind, symbol, at_s, params


def schedule_faults(sim: Sim, faults: list) -> None:
    loop = asyncio.get_running_loop()
    for exchange, kind, symbol, at_s, params in faults:
        loop.call_later(at_s, sim.venues[exchange].inject, kind, symbol, params)


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


async def amain(opts, plan: Plan) -> None:
    stop = asyncio.Event()                     # signals first: a stop during start-up still cleans up
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if opts.exit_on_stdin_eof:
        watch_stdin(loop, stop)
    workdir = Path(tempfile.mkdtemp(prefix="obsim-", dir=opts.tmp_dir))   # after the handlers
    stamps = None
    try:
        venues = build_venues(opts, plan)
        if opts.send_stamps is not None:
            stamps = StampLog(str(opts.send_stamps))
            for venue in venues.values():
                venue.stamps = stamps
        ca_path, cert_path, key_path = make_certificates(workdir)
        sim = Sim(opts, venues, server_context(cert_path, key_path), str(ca_path))
        await sim.start()
        schedule_faults(sim, plan.faults)
        if opts.write_config is not None:
            write_observer_config(opts.write_config, sim.endpoints(), plan.names)
        sys.stdout.write(orjson.dumps(sim.endpoints()).decode() + "\n")
        sys.stdout.flush()
        await stop.wait()
        await sim.close()
    finally:
        if stamps is not None:
            stamps.close()
        shutil.rmtree(workdir, ignore_errors=True)


def write_observer_config(path: Path, endpoints: dict, names: list[str]) -> None:
    """The observer config for what is served, written whole (a temp file renamed), so an
    observer started as soon as the file exists never reads half of it."""
    from obsim.simconfig import config_text

    text = ("# Written by obsim --write-config: valid while that obsim runs (its URLs, its CA).\n"
            + config_text(endpoints, names, name=OBSERVER_NAME))
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(text, encoding="utf-8")
    os.replace(partial, path)


def _version_text() -> str:
    from obsim.version import version_text

    return version_text()


def main(argv: list[str] | None = None) -> int:
    try:
        opts = parser().parse_args(argv)
        plan = prepare(opts)
    except UsageError as exc:
        print(f"obsim: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:                  # nothing made yet
        return 0
    logging.basicConfig(level=opts.log_level, stream=sys.stderr,
                        format="obsim %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(amain(opts, plan))
    except KeyboardInterrupt:                  # before amain took SIGINT: nothing made yet
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
