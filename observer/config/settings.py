"""Configuration: the TOML file users write, and the command line that overrides it.

Why a module of its own: every part of the observer takes its settings from one frozen
`ObserverConfig`, built once at start-up from a TOML file (`observer --config FILE`) and/or the
command line (`--feed binance:BTCUSDT,ETHUSDT`, `--depth 20`). Nothing reads the environment or
a global later; a shard process receives the same object (it pickles) and takes its share.

Every key is declared once, in `OBSERVER_KEYS` (the `[observer]` table) and `FEED_KEYS` (each
`[[feed]]` table): its name, the kind of value it holds (observer/config/kinds.py: type, range,
what is refused), its default, what it means, and its command-line flag if it has one. The file
and the flags are both checked through that table, so a key means and accepts the same thing
wherever it is set. Adding a key is one row here plus its field on the dataclass (an import-time
assert keeps the two in step); cli.py builds its flags from the same rows.

Endpoints are configurable end to end (contract C10): each feed takes its WebSocket and REST
endpoints from the file, defaulting to the exchange's real public endpoints, so a user can point
it at a testnet, a proxy or the bundled simulator (`obsim`). `ca_file` adds a CA to trust for
TLS (testnets, proxies, the simulator's self-signed certificate); verification is never off.

A bad file is one `ConfigError` line naming the file, the line when it can be found, the table,
the key and the problem (`observer.toml:7: [[feed]] #2 rate_hz: must be a finite number from
0.001 to 1e+06, got nan`); the process never starts half-configured.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from observer.config.kinds import (CaFile, Choice, CoreList, Flag, IdList, Integer, Kind, Name,
                                  Number, Problem, ReadableFile, SocketPath, SymbolList, Url,
                                  UrlList, shown)
from obproto import messages as m

DEPTH_DEFAULT = 50
DEPTH_MAX = 1000
SYMBOLS_PER_FEED_MAX = 1024
FEEDS_MAX = 64
NAME_BYTES_MAX = 32
SHARDS_MAX = 256                 # one shard per --cores entry (observer/config/shardplan.py)
CONFIG_BYTES_MAX = 1 << 20       # a config file past this is refused, not read whole
RATE_HZ_MIN, RATE_HZ_MAX = 0.001, 1_000_000.0      # synthetic updates per second per symbol
LAG_BOUND_MS_MIN, LAG_BOUND_MS_MAX = 1.0, 86_400_000.0     # exchange times are in ms; a day
SEED_MAX = 2**63 - 1

BYBIT_CATEGORIES = ("spot", "linear")
BACKENDS = ("io_uring", "epoll", "kqueue")
WAKE_MODES = ("auto", "eventfd", "io_uring")        # observer/shm/wake.py uses this list
WAKE_GAP_US_PER_CLIENT = 0        # pacing off: it trades every client's latency for shard CPU
WAKE_GAP_US_PER_CLIENT_SUGGESTED = 40  # when on: ~2x a client's wake-up CPU (observer/shm/writer.py)
WAKE_GAP_US_PER_CLIENT_MAX = 10_000
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")

# Control-socket admission (observer/server/admission.py). One obclient.Client is one
# connection; a process needing more than 32 is leaking them. A uid gets at most half the
# slots, so one user (an `allow_uids` one, or ours) cannot lock the others out.
CLIENTS_MAX = 256
CLIENTS_PER_UID_MAX = 128
CLIENTS_PER_PID_MAX = 32
# Each client waits on its own epoll holding a shard's eventfd, inside the client's own epoll:
# Linux allows 500 such two-level paths to one eventfd (fs/eventpoll.c, path limits), so the
# 501st client of a shard could not attach (EINVAL). Past this, BUSY says so instead.
CLIENTS_LIMIT_MAX = 500
CLIENT_IDLE_S = 60.0             # obclient pings after half of it, from any call or wait
CLIENT_IDLE_S_MAX = 86400.0

# The real public endpoints (docs/EXCHANGES.md). `{category}` is filled in for Bybit.
ENDPOINTS_DEFAULT: dict[str, tuple[str | None, str | None]] = {
    "binance": ("wss://stream.binance.com:9443", "https://api.binance.com"),
    "binance-futures": ("wss://fstream.binance.com", "https://fapi.binance.com"),
    "coinbase": ("wss://advanced-trade-ws.coinbase.com", None),
    "kraken": ("wss://ws.kraken.com/v2", None),
    "okx": ("wss://ws.okx.com:8443/ws/v5/public", None),
    "bybit": ("wss://stream.bybit.com/v5/public/{category}", "https://api.bybit.com"),
    "synthetic": (None, None),
    "nats": (None, None),        # a mirror of relayed books (observer/shard/natsfeed.py): `url`
}
EXCHANGES = tuple(ENDPOINTS_DEFAULT)
CONNECTING = tuple(e for e, (ws, _) in ENDPOINTS_DEFAULT.items() if ws)
NATS = ("nats",)
NATS_URLS_MAX = 16
NATS_SCHEMES = ("nats", "tls")
WITH_REST = tuple(e for e, (_, rest) in ENDPOINTS_DEFAULT.items() if rest)
REQUIRED = object()


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names where and why, on one line."""


@dataclass(frozen=True)
class Key:
    """One configuration key. `exchanges`: the feeds it applies to (None: every feed)."""

    name: str
    kind: Kind
    default: Any
    meaning: str
    flag: str | None = None
    exchanges: tuple[str, ...] | None = None


OBSERVER_KEYS = (
    Key("name", Name(NAME_BYTES_MAX), "main",
        "instance name: one live observer per name; names the segment and lock", "--name"),
    Key("socket", SocketPath(), None, "control socket path (default: $OBSERVER_SOCKET, else "
        "observer.sock in $XDG_RUNTIME_DIR or the temp dir)", "--socket"),
    Key("depth", Integer(1, DEPTH_MAX), DEPTH_DEFAULT, "levels per side published", "--depth"),
    Key("cores", CoreList(SHARDS_MAX), None, "one pinned shard process per core, e.g. 2,3 or "
        "0-3 (default: one unpinned shard in the supervisor's process)", "--cores"),
    Key("backend", Choice(BACKENDS), None, "force a loom backend (default: probe)", "--backend"),
    Key("wake", Choice(WAKE_MODES), "auto", "how a shard wakes clients: write its eventfd, or "
        "have an io_uring worker write it (the shard's cost then does not grow with clients); "
        "auto: the first below 16 attached clients, the second from there", "--wake"),
    Key("wake_gap_us_per_client", Integer(0, WAKE_GAP_US_PER_CLIENT_MAX),
        WAKE_GAP_US_PER_CLIENT, "from 16 attached clients, a shard wakes them at most once per "
        "clients x this many us (records published meanwhile are announced at the gap's end), "
        "so their wake-ups use a bounded share of the CPU; 0: wake on every flush"),
    Key("shard_slice_us", Integer(0, 100_000), 0, "ask Linux (6.12+) to run shards in slices "
        "of this many us (100 to 100000; 0: the kernel's default), so a shard waits less behind "
        "a burst of woken clients (observer/shard/schedslice.py)"),
    Key("wake_ahead", Flag(), True, "wake clients when a message arrives, before it is parsed "
        "(false for hosts whose clients all busy-poll)"),
    Key("log_format", Choice(LOG_FORMATS), "text", "log line format", "--log-format"),
    Key("log_level", Choice(LOG_LEVELS), "info", "least severe level logged", "--log-level"),
    Key("lag_bound_ms", Number(LAG_BOUND_MS_MIN, LAG_BOUND_MS_MAX), 1000.0,
        "a book further behind its exchange than this is published as lagging", "--lag-bound-ms"),
    Key("allow_uids", IdList("uid"), (), "control-socket peers allowed besides our own uid"),
    Key("allow_gids", IdList("gid"), (), "control-socket peers allowed by their gid"),
    Key("clients_max", Integer(1, CLIENTS_LIMIT_MAX), CLIENTS_MAX,
        "control-socket connections in all (past it: BUSY)"),
    Key("clients_per_uid_max", Integer(1, CLIENTS_LIMIT_MAX), CLIENTS_PER_UID_MAX,
        "control-socket connections of one uid, so one user cannot lock the others out"),
    Key("clients_per_pid_max", Integer(1, CLIENTS_LIMIT_MAX), CLIENTS_PER_PID_MAX,
        "control-socket connections of one process (obclient: one per Client)"),
    Key("client_idle_s", Number(m.IDLE_S_MIN, CLIENT_IDLE_S_MAX), CLIENT_IDLE_S,
        "a connection with no subscription that sends nothing this long is closed (IDLE); "
        "obclient pings after half of it"),
)
FEED_KEYS = (
    Key("exchange", Choice(EXCHANGES, fold_case=True), REQUIRED, "which exchange"),
    Key("symbols", SymbolList(SYMBOLS_PER_FEED_MAX), REQUIRED, "the exchange's symbols (nats "
        "feeds: book names exchange:SYMBOL; default every book of the relay, listed from its "
        "stream at start-up)"),
    Key("category", Choice(BYBIT_CATEGORIES), None, "Bybit market", exchanges=("bybit",)),
    Key("ws_url", Url(("ws", "wss")), None, "WebSocket endpoint (default: the real one)",
        exchanges=CONNECTING),
    Key("rest_url", Url(("http", "https")), None, "REST endpoint for snapshots",
        exchanges=WITH_REST),
    Key("ca_file", CaFile(), None, "an extra CA to trust (testnets, proxies, obsim; the NATS "
        "servers' CA for nats feeds)", "--ca-file", exchanges=CONNECTING + NATS),
    Key("depth", Integer(1, DEPTH_MAX), None, "subscription depth (default: the observer's)"),
    Key("shard", Integer(0, SHARDS_MAX - 1), None, "pin this feed to a shard (with cores)"),
    Key("rate_hz", Number(RATE_HZ_MIN, RATE_HZ_MAX), 100.0,
        "synthetic feeds: updates per second per symbol", "--rate", exchanges=("synthetic",)),
    Key("seed", Integer(0, SEED_MAX), 1, "synthetic feeds: random seed", "--seed",
        exchanges=("synthetic",)),
    Key("url", UrlList(NATS_SCHEMES, NATS_URLS_MAX), None, "nats feeds: the NATS server, or a "
        "list of a cluster's servers (nats:// or tls://)", exchanges=NATS),
    Key("relay", Name(NAME_BYTES_MAX), None, "nats feeds: the relayed observer's name (the "
        "<observer> of its subjects ob.<observer>.>)", exchanges=NATS),
    Key("subject_prefix", Name(NAME_BYTES_MAX), "ob", "nats feeds: the relay's subject prefix",
        exchanges=NATS),
    Key("creds", ReadableFile("NATS credentials"), None, "nats feeds: a NATS credentials file "
        "(user JWT and nkey seed)", exchanges=NATS),
    Key("tls_cert", ReadableFile("PEM certificate"), None, "nats feeds: a client certificate "
        "(mutual TLS; needs tls_key)", exchanges=NATS),
    Key("tls_key", ReadableFile("PEM key"), None, "nats feeds: the client certificate's key",
        exchanges=NATS),
)
KEYS = {"observer": {k.name: k for k in OBSERVER_KEYS}, "feed": {k.name: k for k in FEED_KEYS}}


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
    url: tuple[str, ...] | None = None  # nats only: the server(s)
    relay: str | None = None  # nats only: the relayed observer's name
    subject_prefix: str = "ob"  # nats only
    creds: str | None = None  # nats only: credentials file
    tls_cert: str | None = None  # nats only: client certificate (with tls_key)
    tls_key: str | None = None  # nats only


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
    wake_gap_us_per_client: int = WAKE_GAP_US_PER_CLIENT  # pacing, observer/shm/writer.py
    shard_slice_us: int = 0  # observer/shard/schedslice.py; 0: the kernel's default slice
    log_format: str = "text"
    log_level: str = "info"
    lag_bound_ms: float = 1000.0
    allow_uids: tuple[int, ...] = ()
    allow_gids: tuple[int, ...] = ()
    clients_max: int = CLIENTS_MAX
    clients_per_uid_max: int = CLIENTS_PER_UID_MAX
    clients_per_pid_max: int = CLIENTS_PER_PID_MAX
    client_idle_s: float = CLIENT_IDLE_S

    @property
    def client_limits(self) -> ClientLimits:
        return ClientLimits(self.clients_max, self.clients_per_uid_max, self.clients_per_pid_max,
                            self.client_idle_s)

    def with_overrides(self, **changes: Any) -> "ObserverConfig":
        """A copy with the given fields replaced (command-line flags override the file)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})


def _assert_table_matches(keys, cls, not_keys) -> None:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert set(fields) - set(not_keys) == {k.name for k in keys}
    for key in keys:
        assert key.default is REQUIRED or key.default == fields[key.name].default, key.name


_assert_table_matches(OBSERVER_KEYS, ObserverConfig, ("feeds",))
_assert_table_matches(FEED_KEYS, FeedConfig, ())


# -- where a value came from -------------------------------------------------------------------

@dataclass(frozen=True)
class Source:
    """Where values come from, for errors: a file (its text gives line numbers) or a flag."""

    name: str
    text: str | None = None
    tables: bool = True           # False for `--feed SPEC`: no [[feed]] table to name

    def where(self, table: str, index: int | None = None, key: str | None = None) -> str:
        line = _line_of(self.text, table, index, key) if self.text is not None else None
        place = f"{self.name}:{line}" if line else self.name
        if not self.tables:
            return f"{place}: {_key_text(key)}" if key is not None else place
        place += ": [observer]" if table == "observer" else f": [[feed]] #{index + 1}"
        return f"{place} {_key_text(key)}" if key is not None else place


_HEADER = re.compile(r"\s*(\[\[?)\s*([A-Za-z0-9_-]+)\s*\]")


def _line_of(text: str, table: str, index: int | None, key: str | None) -> int | None:
    """The line of `key` in the `index`th `table` (or of the table's header), if written plainly."""
    current, feeds_seen, header_line = None, -1, None
    key_line = re.compile(rf"\s*[\"']?{re.escape(key)}[\"']?\s*=") if key is not None else None
    for number, line in enumerate(text.splitlines(), 1):
        header = _HEADER.match(line)
        if header:
            current = header[2]
            feeds_seen += current == "feed" and header[1] == "[["
            if current == table and (table != "feed" or feeds_seen == index):
                header_line = number
            continue
        if (header_line is not None and key_line is not None and key_line.match(line)
                and current == table and (table != "feed" or feeds_seen == index)):
            return number
    return header_line


def _key_text(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]{1,64}", key) else shown(key)


# -- reading -----------------------------------------------------------------------------------

def load_config(path: str | Path) -> ObserverConfig:
    """Read and validate a TOML config file."""
    shown_path = _path_text(path)
    text = read_text(path, shown_path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{shown_path}: not valid TOML: {exc}") from None
    except ValueError:            # an integer of thousands of digits: int() refuses it
        raise ConfigError(f"{shown_path}: not valid TOML: a number too long to read") from None
    except RecursionError:
        raise ConfigError(f"{shown_path}: not valid TOML: arrays or tables nested too deeply") from None
    return config_from_dict(data, where=shown_path, text=text)


def read_text(path: str | Path, shown_path: str) -> str:
    """The file's text: a regular file or a pipe, at most CONFIG_BYTES_MAX bytes, UTF-8."""
    try:
        with open(path, "rb") as f:
            data = f.read(CONFIG_BYTES_MAX + 1)
    except OSError as exc:
        raise ConfigError(f"{shown_path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > CONFIG_BYTES_MAX:
        raise ConfigError(f"{shown_path}: larger than config_bytes_max={CONFIG_BYTES_MAX}")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{shown_path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} "
                          f"at offset {exc.start})") from None


def _path_text(path: str | Path) -> str:
    text = os.fspath(path)
    return text if text and text.isprintable() else shown(text)


def config_from_dict(data: dict[str, Any], *, where: str = "config",
                     text: str | None = None) -> ObserverConfig:
    source = Source(where, text)
    unknown = sorted(set(data) - {"observer", "feed"})
    if unknown:
        raise ConfigError(f"{where}: unknown table {_key_text(unknown[0])}; expected [observer] "
                          f"and [[feed]]")
    top = data.get("observer", {})
    if not isinstance(top, dict):
        raise ConfigError(f"{where}: observer must be a table ([observer])")
    feeds_raw = data.get("feed", [])
    if not isinstance(feeds_raw, list):
        raise ConfigError(f"{where}: feed must be an array of tables ([[feed]])")
    if len(feeds_raw) > FEEDS_MAX:
        raise ConfigError(f"{where}: {len(feeds_raw)} feeds, more than feeds_max={FEEDS_MAX}")
    values = _take_keys(top, "observer", source)
    feeds = tuple(_feed_from_table(t, source, i) for i, t in enumerate(feeds_raw))
    config = ObserverConfig(feeds=feeds, **values)
    validate(config, where=where)
    return config


def _take_keys(table: dict[str, Any], table_name: str, source: Source, index: int | None = None,
               exchange: str | None = None) -> dict[str, Any]:
    """Every key present in `table`, checked through its row; unknown keys are refused."""
    keys = KEYS[table_name]
    for name in table:
        if name not in keys:
            raise ConfigError(f"{source.where(table_name, index, name)}: unknown key; expected "
                              f"one of {', '.join(keys)}")
    values = {}
    for name, value in table.items():
        key = keys[name]
        where = source.where(table_name, index, name)
        if key.exchanges is not None and exchange not in key.exchanges:
            raise ConfigError(f"{where}: {_applies_text(key.exchanges, exchange)}")
        try:
            values[name] = key.kind.check(value)
        except Problem as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return values


def _applies_text(exchanges: tuple[str, ...], exchange: str) -> str:
    if exchanges in (CONNECTING, CONNECTING + NATS):
        return f"does not apply to {exchange} feeds (they make no connections)"
    return f"applies to {', '.join(exchanges)} feeds only, not {exchange}"


def _feed_from_table(table: Any, source: Source, index: int | None) -> FeedConfig:
    if not isinstance(table, dict):
        raise ConfigError(f"{source.where('feed', index)}: must be a table")
    if "exchange" not in table:
        raise ConfigError(f"{source.where('feed', index)}: exchange is required (one of "
                          f"{', '.join(EXCHANGES)})")
    exchange = _take_keys({"exchange": table["exchange"]}, "feed", source, index)["exchange"]
    if "symbols" not in table and exchange != "nats":
        raise ConfigError(f"{source.where('feed', index)}: symbols is required")
    values = _take_keys({k: v for k, v in table.items() if k != "exchange"}, "feed", source,
                        index, exchange)
    if exchange == "nats":
        _check_nats(values, source, index)
        values.setdefault("symbols", ())   # every book of the relay, listed at start-up
    return _feed(exchange, values)


def _check_nats(values: dict[str, Any], source: Source, index: int | None) -> None:
    """What a nats feed cannot do without: its servers and the relay's name; a key for a cert."""
    for required in ("url", "relay"):
        if required not in values:
            raise ConfigError(f"{source.where('feed', index)}: {required} is required for nats "
                              f"feeds")
    if ("tls_cert" in values) != ("tls_key" in values):
        raise ConfigError(f"{source.where('feed', index, 'tls_cert')}: tls_cert and tls_key go "
                          f"together")


def _feed(exchange: str, values: dict[str, Any]) -> FeedConfig:
    """A FeedConfig with the exchange's own defaults (endpoints, Bybit's category)."""
    category = values.pop("category", "spot" if exchange == "bybit" else None)
    ws_default, rest_default = ENDPOINTS_DEFAULT[exchange]
    if ws_default and category:
        ws_default = ws_default.format(category=category)
    values.setdefault("ws_url", ws_default)
    values.setdefault("rest_url", rest_default)
    return FeedConfig(exchange=exchange, category=category, **values)


def parse_feed_spec(spec: str, *, ca_file: str | None = None) -> FeedConfig:
    """`binance:BTCUSDT,ETHUSDT` -> FeedConfig with default endpoints.

    `bybit/linear:BTCUSDT` selects Bybit's linear category (default spot). `ca_file` applies to
    feeds that connect (not to synthetic ones).
    """
    source = Source(f"--feed {shown(spec)}", tables=False)
    exchange, sep, symbols_text = spec.partition(":")
    if not sep or not exchange.strip() or not symbols_text.strip():
        raise ConfigError(f"{source.name}: expected EXCHANGE:SYMBOL[,SYMBOL...]")
    exchange, slash, category = exchange.strip().lower().partition("/")
    table: dict[str, Any] = {"exchange": exchange,
                             "symbols": [s.strip() for s in symbols_text.split(",")]}
    if slash:
        table["category"] = category
    if ca_file is not None and exchange in CONNECTING:
        table["ca_file"] = ca_file
    return _feed_from_table(table, source, None)


def parse_flag(key: Key, text: str) -> Any:
    """A command-line value for `key`, checked by the key's own kind (ConfigError naming the flag)."""
    try:
        return key.kind.parse(text)
    except Problem as exc:
        raise ConfigError(f"{key.flag}: {exc}") from None


def validate(config: ObserverConfig, *, where: str = "config") -> None:
    """What no single key can check: the same book configured twice."""
    seen: dict[tuple[str, str | None, str], int] = {}
    for index, feed in enumerate(config.feeds):
        for symbol in feed.symbols:
            key = (feed.exchange, feed.category, symbol.upper())
            if key in seen:
                raise ConfigError(f"{where}: {feed.exchange}:{symbol} is configured twice "
                                  f"(feeds #{seen[key] + 1} and #{index + 1})")
            seen[key] = index


# -- --cores -----------------------------------------------------------------------------------

_CORES_PART = re.compile(r"\s*([0-9]{1,9})\s*(?:-\s*([0-9]{1,9})\s*)?")


def parse_cores(text: str, cores_n: int | None = None) -> tuple[int, ...]:
    """`2,3` or `0-3` or `0,2-3` -> (0, 2, 3); a clear error otherwise.

    Each range is checked against the machine's core count (`cores_n`) before it is expanded,
    so `0-99999999` is an error naming the allowed cores, not a list of 10**8 ints.
    """
    cores_n = cores_n or os.cpu_count() or 1
    spans, missing = [], []
    for part in text.split(","):
        match = _CORES_PART.fullmatch(part)
        if match is None:
            raise ConfigError(f"--cores {shown(text)}: expected a list like 2,3 or 0-3")
        lo = int(match[1])
        hi = int(match[2]) if match[2] is not None else lo
        if hi < lo:
            raise ConfigError(f"--cores {shown(text)}: range {lo}-{hi} runs backwards")
        if hi >= cores_n:                   # name the part past the machine, never expand it
            first = max(lo, cores_n)
            missing.append(f"{first}-{hi}" if hi > first else str(hi))
        spans.append(range(lo, min(hi, cores_n - 1) + 1))
    if missing:
        allowed = ",".join(map(str, sorted(os.sched_getaffinity(0))))
        raise ConfigError(f"--cores: core(s) {','.join(missing)} do not exist or are not "
                          f"allowed for this process; allowed cores: {allowed}")
    cores = [core for span in spans for core in span]      # at most cores_n per span
    if len(cores) > SHARDS_MAX:
        raise ConfigError(f"--cores: {len(cores)} cores, more than shards_max={SHARDS_MAX}")
    if len(set(cores)) != len(cores):
        twice = next(c for c in cores if cores.count(c) > 1)
        raise ConfigError(f"--cores {shown(text)}: lists core {twice} twice")
    return tuple(cores)
