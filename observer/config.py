"""Configuration: the TOML file users write, and the `--feed` shorthand.

Why a module of its own: every part of the observer takes its settings from one frozen
`ObserverConfig`, built once at start-up from a TOML file (`observer --config FILE`) and/or the
command-line shorthand (`--feed binance:BTCUSDT,ETHUSDT`). Nothing reads the environment or a
global later; a shard process receives the same object (it pickles) and takes its share.

Endpoints are configurable end to end (contract C10): each feed takes its WebSocket and REST
endpoints from the file, defaulting to the exchange's real public endpoints, so a user can point
it at a testnet, a proxy or the bundled simulator (`obsim`). `ca_file` adds a CA to trust for
TLS (testnets, proxies, the simulator's self-signed certificate); verification is never off.

A bad file is a clear `ConfigError` that names the file, the key and what was expected; the
process never starts half-configured.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from proto import messages as m

DEPTH_DEFAULT = 50
DEPTH_MAX = 1000
SYMBOLS_PER_FEED_MAX = 1024
FEEDS_MAX = 64
NAME_BYTES_MAX = 32

BYBIT_CATEGORIES = ("spot", "linear")

# Control-socket admission (observer/server/admission.py). One obclient.Client is one
# connection; a process needing more than 32 is leaking them. A uid gets at most half the
# slots, so one user (an `allow_uids` one, or ours) cannot lock the others out.
CLIENTS_MAX = 256
CLIENTS_PER_UID_MAX = 128
CLIENTS_PER_PID_MAX = 32
CLIENT_IDLE_S = 60.0          # obclient pings after half of it, from any call or wait

# The real public endpoints (PROTOCOLS.md). `{category}` is filled in for Bybit.
ENDPOINTS_DEFAULT: dict[str, tuple[str | None, str | None]] = {
    "binance": ("wss://stream.binance.com:9443", "https://api.binance.com"),
    "binance-futures": ("wss://fstream.binance.com", "https://fapi.binance.com"),
    "coinbase": ("wss://advanced-trade-ws.coinbase.com", None),
    "kraken": ("wss://ws.kraken.com/v2", None),
    "okx": ("wss://ws.okx.com:8443/ws/v5/public", None),
    "bybit": ("wss://stream.bybit.com/v5/public/{category}", "https://api.bybit.com"),
    "synthetic": (None, None),
}
EXCHANGES = tuple(ENDPOINTS_DEFAULT)


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names where and why."""


@dataclass(frozen=True)
class FeedConfig:
    exchange: str
    symbols: tuple[str, ...]
    ws_url: str | None = None
    rest_url: str | None = None
    ca_file: str | None = None
    category: str | None = None  # Bybit only: "spot" or "linear"
    depth: int | None = None  # subscription depth; None: the observer's depth
    shard: int | None = None  # pin this feed to a shard; None: balanced by expected rate
    rate_hz: float = 100.0  # synthetic only: updates per second per symbol
    seed: int = 1  # synthetic only


@dataclass(frozen=True)
class ClientLimits:
    """Who may hold a control-socket connection, and for how long in silence; the `[observer]`
    keys of the same names."""

    clients_max: int = CLIENTS_MAX
    clients_per_uid_max: int = CLIENTS_PER_UID_MAX
    clients_per_pid_max: int = CLIENTS_PER_PID_MAX
    client_idle_s: float = CLIENT_IDLE_S


@dataclass(frozen=True)
class ObserverConfig:
    name: str = "main"
    socket: str | None = None
    depth: int = DEPTH_DEFAULT
    feeds: tuple[FeedConfig, ...] = ()
    cores: tuple[int, ...] | None = None
    backend: str | None = None
    wake: str = "auto"  # how flushes wake clients: auto, eventfd or io_uring (observer/shm/wake.py)
    wake_ahead: bool = True  # wake clients when a message arrives, before it is parsed
    log_format: str = "text"
    log_level: str = "info"
    lag_bound_ms: float = 1000.0
    allow_uids: tuple[int, ...] = ()
    allow_gids: tuple[int, ...] = ()
    client_limits: ClientLimits = ClientLimits()
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def with_overrides(self, **changes: Any) -> "ObserverConfig":
        """A copy with the given fields replaced (command-line flags override the file)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def parse_feed_spec(spec: str, *, ca_file: str | None = None) -> FeedConfig:
    """`binance:BTCUSDT,ETHUSDT` -> FeedConfig with default endpoints.

    `bybit/linear:BTCUSDT` selects Bybit's linear category (default spot).
    """
    exchange, sep, symbols_text = spec.partition(":")
    if not sep or not symbols_text.strip():
        raise ConfigError(f"--feed {spec!r}: expected EXCHANGE:SYMBOL[,SYMBOL...]")
    exchange, _, category = exchange.strip().lower().partition("/")
    symbols = tuple(s.strip() for s in symbols_text.split(",") if s.strip())
    table = {"exchange": exchange, "symbols": list(symbols)}
    if category:
        table["category"] = category
    if ca_file:
        table["ca_file"] = ca_file
    return _feed_from_table(table, where=f"--feed {spec!r}")


def load_config(path: str | Path) -> ObserverConfig:
    """Read and validate a TOML config file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return config_from_dict(data, where=str(path))


def config_from_dict(data: dict[str, Any], *, where: str = "config") -> ObserverConfig:
    unknown = set(data) - {"observer", "feed"}
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {sorted(unknown)}; expected [observer] and [[feed]]")
    top = dict(data.get("observer", {}))
    feeds_raw = data.get("feed", [])
    if not isinstance(feeds_raw, list):
        raise ConfigError(f"{where}: [[feed]] must be an array of tables")
    if len(feeds_raw) > FEEDS_MAX:
        raise ConfigError(f"{where}: {len(feeds_raw)} feeds, more than feeds_max={FEEDS_MAX}")
    feeds = tuple(_feed_from_table(t, where=f"{where}: feed #{i + 1}") for i, t in enumerate(feeds_raw))
    config = ObserverConfig(
        name=_take(top, "name", str, "main", where),
        socket=_take(top, "socket", str, None, where),
        depth=_take(top, "depth", int, DEPTH_DEFAULT, where),
        feeds=feeds,
        cores=_take_cores(top, where),
        backend=_take(top, "backend", str, None, where),
        wake=_take(top, "wake", str, "auto", where),
        wake_ahead=_take(top, "wake_ahead", bool, True, where),
        log_format=_take(top, "log_format", str, "text", where),
        log_level=_take(top, "log_level", str, "info", where),
        lag_bound_ms=float(_take(top, "lag_bound_ms", (int, float), 1000.0, where)),
        allow_uids=tuple(_take(top, "allow_uids", list, [], where)),
        allow_gids=tuple(_take(top, "allow_gids", list, [], where)),
        client_limits=_take_client_limits(top, where),
    )
    if top:
        raise ConfigError(f"{where}: [observer] has unknown key(s) {sorted(top)}")
    validate(config, where=where)
    return config


def validate(config: ObserverConfig, *, where: str = "config") -> None:
    name_bytes = config.name.encode()
    if not name_bytes or len(name_bytes) > NAME_BYTES_MAX or not config.name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"{where}: name {config.name!r} must be 1-{NAME_BYTES_MAX} letters, digits, '-' or '_'")
    if not 1 <= config.depth <= DEPTH_MAX:
        raise ConfigError(f"{where}: depth {config.depth} outside 1..{DEPTH_MAX}")
    if config.wake not in ("auto", "eventfd", "io_uring"):
        raise ConfigError(f"{where}: wake {config.wake!r}: expected auto, eventfd or io_uring")
    if config.backend not in (None, "io_uring", "epoll", "kqueue"):
        raise ConfigError(f"{where}: backend {config.backend!r}: expected io_uring, epoll or kqueue")
    if config.log_format not in ("text", "json"):
        raise ConfigError(f"{where}: log_format {config.log_format!r}: expected text or json")
    if config.log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"{where}: log_level {config.log_level!r}: expected debug, info, warning or error")
    if config.lag_bound_ms <= 0:
        raise ConfigError(f"{where}: lag_bound_ms must be positive")
    _check_client_limits(config.client_limits, where)
    seen: dict[tuple[str, str | None, str], int] = {}
    for index, feed in enumerate(config.feeds):
        for symbol in feed.symbols:
            key = (feed.exchange, feed.category, symbol.upper())
            if key in seen:
                raise ConfigError(f"{where}: {feed.exchange}:{symbol} is configured twice (feeds #{seen[key] + 1} and #{index + 1})")
            seen[key] = index


def _feed_from_table(table: dict[str, Any], *, where: str) -> FeedConfig:
    if not isinstance(table, dict):
        raise ConfigError(f"{where}: must be a table")
    table = dict(table)
    exchange = _take(table, "exchange", str, None, where)
    if exchange is None:
        raise ConfigError(f"{where}: 'exchange' is required (one of {', '.join(EXCHANGES)})")
    exchange = exchange.lower()
    if exchange not in ENDPOINTS_DEFAULT:
        raise ConfigError(f"{where}: unknown exchange {exchange!r}; expected one of {', '.join(EXCHANGES)}")
    symbols = _take(table, "symbols", list, None, where)
    if not symbols or not all(isinstance(s, str) and s.strip() for s in symbols):
        raise ConfigError(f"{where}: 'symbols' must be a non-empty list of strings")
    if len(symbols) > SYMBOLS_PER_FEED_MAX:
        raise ConfigError(f"{where}: {len(symbols)} symbols, more than symbols_per_feed_max={SYMBOLS_PER_FEED_MAX}")
    category = _take(table, "category", str, None, where)
    if exchange == "bybit":
        category = (category or "spot").lower()
        if category not in BYBIT_CATEGORIES:
            raise ConfigError(f"{where}: bybit category {category!r}: expected spot or linear")
    elif category is not None:
        raise ConfigError(f"{where}: 'category' applies to bybit only")
    ws_default, rest_default = ENDPOINTS_DEFAULT[exchange]
    if ws_default and category:
        ws_default = ws_default.format(category=category)
    feed = FeedConfig(
        exchange=exchange,
        symbols=tuple(s.strip() for s in symbols),
        ws_url=_take(table, "ws_url", str, ws_default, where),
        rest_url=_take(table, "rest_url", str, rest_default, where),
        ca_file=_take(table, "ca_file", str, None, where),
        category=category,
        depth=_take(table, "depth", int, None, where),
        shard=_take(table, "shard", int, None, where),
        rate_hz=float(_take(table, "rate_hz", (int, float), 100.0, where)),
        seed=_take(table, "seed", int, 1, where),
    )
    if table:
        raise ConfigError(f"{where}: unknown key(s) {sorted(table)}")
    _check_url(feed.ws_url, ("ws", "wss"), "ws_url", where)
    _check_url(feed.rest_url, ("http", "https"), "rest_url", where)
    if feed.depth is not None and not 1 <= feed.depth <= DEPTH_MAX:
        raise ConfigError(f"{where}: depth {feed.depth} outside 1..{DEPTH_MAX}")
    if feed.ca_file is not None and not Path(feed.ca_file).is_file():
        raise ConfigError(f"{where}: ca_file {feed.ca_file!r} does not exist")
    if feed.rate_hz <= 0:
        raise ConfigError(f"{where}: rate_hz must be positive")
    return feed


def _check_url(url: str | None, schemes: tuple[str, ...], key: str, where: str) -> None:
    if url is None:
        return
    parts = urlsplit(url)
    if parts.scheme not in schemes or not parts.hostname:
        raise ConfigError(f"{where}: {key} {url!r}: expected {' or '.join(s + '://HOST[:PORT]' for s in schemes)}")


def _take(table: dict[str, Any], key: str, kind: Any, default: Any, where: str) -> Any:
    if key not in table:
        return default
    value = table.pop(key)
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: {key} = {value!r}: expected true or false")
        return value
    # bool is an int in Python; a TOML `true` is never a valid number here.
    if isinstance(value, bool) or not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ConfigError(f"{where}: {key} = {value!r}: expected {expected}")
    return value


def _take_client_limits(top: dict[str, Any], where: str) -> ClientLimits:
    d = ClientLimits()
    return ClientLimits(
        clients_max=_take(top, "clients_max", int, d.clients_max, where),
        clients_per_uid_max=_take(top, "clients_per_uid_max", int, d.clients_per_uid_max, where),
        clients_per_pid_max=_take(top, "clients_per_pid_max", int, d.clients_per_pid_max, where),
        client_idle_s=float(_take(top, "client_idle_s", (int, float), d.client_idle_s, where)),
    )


def _check_client_limits(limits: ClientLimits, where: str) -> None:
    for key in ("clients_max", "clients_per_uid_max", "clients_per_pid_max"):
        if getattr(limits, key) < 1:
            raise ConfigError(f"{where}: {key} must be at least 1")
    idle_s = limits.client_idle_s
    if not math.isfinite(idle_s) or idle_s < m.IDLE_S_MIN:
        raise ConfigError(f"{where}: client_idle_s = {idle_s}: expected a number of seconds, "
                          f"at least {m.IDLE_S_MIN}")


def _take_cores(top: dict[str, Any], where: str) -> tuple[int, ...] | None:
    cores = _take(top, "cores", list, None, where)
    if cores is None:
        return None
    if not cores or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in cores):
        raise ConfigError(f"{where}: cores must be a non-empty list of core numbers")
    if len(set(cores)) != len(cores):
        raise ConfigError(f"{where}: cores {cores} lists a core twice")
    return tuple(cores)


def parse_cores(text: str) -> tuple[int, ...]:
    """`2,3` or `0-3` or `0,2-3` -> (0, 2, 3); a clear error otherwise."""
    cores: list[int] = []
    for part in text.split(","):
        part = part.strip()
        lo, dash, hi = part.partition("-")
        try:
            if dash:
                cores.extend(range(int(lo), int(hi) + 1))
            else:
                cores.append(int(part))
        except ValueError:
            raise ConfigError(f"--cores {text!r}: expected a list like 2,3 or 0-3") from None
    if not cores or min(cores) < 0 or len(set(cores)) != len(cores):
        raise ConfigError(f"--cores {text!r}: expected distinct non-negative core numbers")
    return tuple(cores)
