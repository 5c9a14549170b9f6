"""obrelay's settings: the command line, checked once, into one frozen `RelayConfig`.

Every file the user names (credentials, CA, certificate, key) is opened here, before anything
connects, so a typo is one clear line and exit status 2, never a retry loop that hides it.
NATS options follow the names NATS users know from `nats` and other clients: a server list
(`--nats-url`, repeatable or comma-separated, for a cluster), `--creds` (a JWT + nkey
credentials file), `--tls-ca` / `--tls-cert` / `--tls-key` (server verification and a client
certificate); `tls://` URLs or any TLS option turn TLS on.
"""

from __future__ import annotations

import argparse
import fnmatch
import ssl
from dataclasses import dataclass

from obproto import relay as wire

NATS_URL_DEFAULT = "nats://127.0.0.1:4222"
DEPTH_DEFAULT = 10
HEARTBEAT_MS_DEFAULT = 500
STATS_S_DEFAULT = 10.0
INFLIGHT_BYTES_DEFAULT = 512 * 1024
INFLIGHT_BYTES_MIN = 4 * 1024          # below this one book message may not fit
STREAM_REPLICAS_MAX = 5                # JetStream's own limit


class RelayConfigError(ValueError):
    """A setting obrelay cannot use; the message names it."""


@dataclass(frozen=True)
class RelayConfig:
    socket: str | None = None            # the observer's control socket (None: obclient default)
    name: str | None = None              # the observer name in subjects (None: the observer's)
    books: tuple[str, ...] = ("*",)      # globs over exchange:SYMBOL, case-insensitive
    depth: int = DEPTH_DEFAULT           # levels per side in each book message
    nats_urls: tuple[str, ...] = (NATS_URL_DEFAULT,)
    creds: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    subject_prefix: str = wire.SUBJECT_PREFIX_DEFAULT
    heartbeat_ms: int = HEARTBEAT_MS_DEFAULT
    stats_s: float = STATS_S_DEFAULT     # 0: no periodic stats line
    inflight_bytes_max: int = INFLIGHT_BYTES_DEFAULT
    stream: bool = True                  # create/check the last-value JetStream stream
    stream_replicas: int = 1
    stream_storage: str = "memory"
    log_level: str = "info"

    @property
    def tls(self) -> bool:
        return bool(self.tls_ca or self.tls_cert
                    or any(url.startswith("tls://") for url in self.nats_urls))

    def follows(self, book_name: str) -> bool:
        name = book_name.lower()
        return any(fnmatch.fnmatchcase(name, pattern.lower()) for pattern in self.books)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="obrelay", description="Relay a local observer's books to NATS (docs/RELAY.md).")
    p.add_argument("--socket", help="the observer's control socket (default: $OBSERVER_SOCKET, "
                   "else observer.sock in $XDG_RUNTIME_DIR or the temp dir)")
    p.add_argument("--name", help="observer name used in subjects (default: the observer's own)")
    p.add_argument("--books", action="append", default=[], metavar="GLOB[,GLOB]",
                   help="books to relay, globs over exchange:SYMBOL, e.g. 'binance:*' "
                   "(repeatable; default: every book)")
    p.add_argument("--depth", type=int, default=DEPTH_DEFAULT, help="levels per side")
    p.add_argument("--nats-url", action="append", default=[], metavar="URL[,URL]",
                   help=f"NATS server(s); several for a cluster (default {NATS_URL_DEFAULT})")
    p.add_argument("--creds", help="NATS credentials file (user JWT and nkey seed)")
    p.add_argument("--tls-ca", help="CA file that verifies the NATS server")
    p.add_argument("--tls-cert", help="client certificate (with --tls-key) for NATS mutual TLS")
    p.add_argument("--tls-key", help="the client certificate's private key")
    p.add_argument("--subject-prefix", default=wire.SUBJECT_PREFIX_DEFAULT)
    p.add_argument("--heartbeat-ms", type=int, default=HEARTBEAT_MS_DEFAULT)
    p.add_argument("--stats-s", type=float, default=STATS_S_DEFAULT,
                   help="log a stats line this often (0: never)")
    p.add_argument("--inflight-bytes-max", type=int, default=INFLIGHT_BYTES_DEFAULT,
                   help="bytes published and not yet confirmed by the server past which "
                   "books are coalesced (latest wins) instead of queued")
    p.add_argument("--no-stream", dest="stream", action="store_false",
                   help="do not create or check the last-value JetStream stream")
    p.add_argument("--stream-replicas", type=int, default=1)
    p.add_argument("--stream-storage", choices=("memory", "file"), default="memory")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    return p.parse_args(argv)


def build_config(args: argparse.Namespace) -> RelayConfig:
    config = RelayConfig(
        socket=args.socket, name=args.name, books=_split(args.books) or ("*",),
        depth=args.depth, nats_urls=_split(args.nats_url) or (NATS_URL_DEFAULT,),
        creds=args.creds, tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key,
        subject_prefix=args.subject_prefix, heartbeat_ms=args.heartbeat_ms,
        stats_s=args.stats_s, inflight_bytes_max=args.inflight_bytes_max, stream=args.stream,
        stream_replicas=args.stream_replicas, stream_storage=args.stream_storage,
        log_level=args.log_level)
    validate(config)
    return config


def _split(values: list[str]) -> tuple[str, ...]:
    return tuple(part.strip() for value in values for part in value.split(",") if part.strip())


def validate(config: RelayConfig) -> None:
    if not 1 <= config.depth <= wire.LEVELS_MAX:
        raise RelayConfigError(f"--depth {config.depth}: must be 1..{wire.LEVELS_MAX}")
    if config.heartbeat_ms < 10:
        raise RelayConfigError(f"--heartbeat-ms {config.heartbeat_ms}: must be at least 10")
    if config.stats_s < 0:
        raise RelayConfigError("--stats-s must be 0 (off) or positive")
    if config.inflight_bytes_max < INFLIGHT_BYTES_MIN:
        raise RelayConfigError(f"--inflight-bytes-max must be at least {INFLIGHT_BYTES_MIN}")
    if not 1 <= config.stream_replicas <= STREAM_REPLICAS_MAX:
        raise RelayConfigError(f"--stream-replicas must be 1..{STREAM_REPLICAS_MAX}")
    try:
        wire.check_prefix(config.subject_prefix)
        if config.name is not None:
            wire.token_escape(config.name)
    except ValueError as exc:
        raise RelayConfigError(str(exc)) from None
    for url in config.nats_urls:
        if "://" in url and url.split("://", 1)[0] not in ("nats", "tls"):
            raise RelayConfigError(f"--nats-url {url}: scheme must be nats:// or tls://")
    if bool(config.tls_cert) != bool(config.tls_key):
        raise RelayConfigError("--tls-cert and --tls-key go together")
    for option, path in (("--creds", config.creds), ("--tls-ca", config.tls_ca),
                         ("--tls-cert", config.tls_cert), ("--tls-key", config.tls_key)):
        if path is not None:
            _check_readable(option, path)
    if config.tls:
        tls_context(config)               # a bad PEM file fails here, named


def _check_readable(option: str, path: str) -> None:
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise RelayConfigError(f"{option} {path}: {exc.strerror}") from None


def tls_context(config: RelayConfig) -> ssl.SSLContext | None:
    """The client TLS context: system CAs or --tls-ca; a client certificate if given."""
    if not config.tls:
        return None
    try:
        ctx = ssl.create_default_context(cafile=config.tls_ca)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if config.tls_cert:
            ctx.load_cert_chain(config.tls_cert, config.tls_key)
    except (ssl.SSLError, OSError) as exc:
        raise RelayConfigError(f"TLS files (--tls-ca/--tls-cert/--tls-key) unusable: "
                               f"{exc}") from None
    return ctx
