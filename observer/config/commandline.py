"""The observer's command line: its flags, their checks, and the configuration they make.

Why a module of its own: `observer` (cli.py) must take its stop signals before it imports
anything heavy, so the parser and the checks live here and are imported after that. Every
flag that sets a configuration key is made from the key's row in observer/config/settings.py (its flag,
meaning and kind), and its text is checked by that kind here, so `--rate nan` and
`rate_hz = nan` are refused the same way. argparse reports its own errors on one line (no usage
dump), a flag that takes a value may be given once, and abbreviations are off (a new flag must
never change what an old command line means).

`build_config` makes every check that can fail before anything is created, including those
that depend on this machine: the cores exist and are allowed, the forced backend runs here, the
socket path fits a unix socket address. A failure is one
`ConfigError` line; cli.py prints it and exits 2.
"""

from __future__ import annotations

import argparse
import dataclasses

from observer.config import settings as cfg
from observer.config.kinds import Problem, SocketPath


class UsageError(Exception):
    """A command line argparse cannot read (unknown flag, missing value, flag given twice)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(message.removeprefix("argument "))


class _Once(argparse.Action):
    """A flag that takes one value is given once: a second one is a mistake, not an override."""

    def __call__(self, parser, namespace, values, option_string=None):
        if getattr(namespace, self.dest) is not None:
            raise argparse.ArgumentError(self, "given twice")
        setattr(namespace, self.dest, values)


def _dest(key: cfg.Key) -> str:
    return key.flag.removeprefix("--").replace("-", "_")


def parse_args(argv):
    """The flags, as text: each is checked by its key's kind in build_config."""
    p = _Parser(prog="observer", description="Shared-memory L2 order book server.",
                allow_abbrev=False)
    p.add_argument("--config", action=_Once, metavar="FILE", help="TOML configuration file")
    p.add_argument("--feed", action="append", default=[], metavar="EXCHANGE:SYMBOL[,SYMBOL...]",
                   help="e.g. synthetic:BTCUSD,ETHUSD or bybit/linear:BTCUSDT (repeatable)")
    for key in (*cfg.OBSERVER_KEYS, *cfg.FEED_KEYS):
        if key.flag is None:
            continue
        options = getattr(key.kind, "options", None)
        table = "observer" if key in cfg.OBSERVER_KEYS else "[feed]"
        p.add_argument(key.flag, dest=_dest(key), action=_Once,
                       metavar="{" + ",".join(options) + "}" if options else key.name.upper(),
                       help=f"{key.meaning}" + ("" if options else f"; {key.kind.expected}")
                       + f" (file: [{table}] {key.name})")
    p.add_argument("--no-wake-ahead", dest="wake_ahead", action="store_const", const=False,
                   help="do not wake clients when a message arrives, only after it is "
                   "published (for hosts whose clients all busy-poll)")
    return p.parse_args(argv)


def build_config(args) -> cfg.ObserverConfig:
    """The config in effect: the file, then the flags over it; every check that can fail
    before start-up is made here (ConfigError, exit 2)."""
    config = cfg.load_config(args.config) if args.config is not None else cfg.ObserverConfig()
    overrides = {}
    for key in cfg.OBSERVER_KEYS:
        text = getattr(args, _dest(key)) if key.flag else None
        if text is not None:
            overrides[key.name] = (cfg.parse_cores(text) if key.name == "cores"
                                   else cfg.parse_flag(key, text))
    config = config.with_overrides(**overrides, wake_ahead=args.wake_ahead,
                                   feeds=_feeds(args, config))
    cfg.validate(config, where="command line")
    cores_from = "--cores" if "cores" in overrides else f"{args.config}: cores"
    _check_here(config, cores_from)
    return config


def _feeds(args, config: cfg.ObserverConfig) -> tuple[cfg.FeedConfig, ...]:
    """The feeds in effect: `--feed` flags or the file's `[[feed]]` tables (never both), with
    `--ca-file`, `--rate` and `--seed` applied to the feeds they concern."""
    flag_keys = {key.name: key for key in cfg.FEED_KEYS if key.flag}
    ca_file = (cfg.parse_flag(flag_keys["ca_file"], args.ca_file)
               if args.ca_file is not None else None)
    if args.feed and config.feeds:
        raise cfg.ConfigError(f"--feed: the config file already gives {len(config.feeds)} "
                              f"[[feed]] table(s); give the feeds in one place")
    flag_feeds = [cfg.parse_feed_spec(spec, ca_file=ca_file) for spec in args.feed]
    if ca_file is not None and not any(f.exchange in cfg.CONNECTING for f in flag_feeds):
        raise cfg.ConfigError("--ca-file: applies to --feed feeds that connect to an exchange, "
                              "and there is none (in a config file, set ca_file per [[feed]])")
    feeds = flag_feeds or list(config.feeds)
    for name in ("rate_hz", "seed"):
        key = flag_keys[name]
        text = getattr(args, _dest(key))
        if text is None:
            continue
        value = cfg.parse_flag(key, text)
        if not any(f.exchange == "synthetic" for f in feeds):
            raise cfg.ConfigError(f"{key.flag}: applies to synthetic feeds, and none is configured")
        feeds = [dataclasses.replace(f, **{name: value}) if f.exchange == "synthetic" else f
                 for f in feeds]
    return tuple(feeds)


def _check_here(config: cfg.ObserverConfig, cores_from: str) -> None:
    """What depends on this machine: feeds, cores, backend, socket path. Nothing is created.
    `cores_from` names where the cores were given, for the error."""
    if not config.feeds:
        raise cfg.ConfigError("no feeds: give --feed EXCHANGE:SYMBOLS or a --config file with "
                              "[[feed]] tables")
    if config.cores is not None:
        from observer.loom.pin import allowed_cores
        from observer.config.shardplan import check_cores, partition

        check_cores(config.cores, allowed_cores(), cores_from)
        partition(config.feeds, len(config.cores))
    elif any(f.shard not in (None, 0) for f in config.feeds):
        raise cfg.ConfigError("a feed names a shard other than 0, but without --cores (or "
                              "`cores`) there is one shard")
    if config.backend is not None:
        _check_backend(config.backend)
    _check_socket_path(config.socket)


def _check_backend(name: str) -> None:
    from observer.loom.backend import available_backends, unavailable_reason

    reason = unavailable_reason(name)
    if reason is not None:            # asked for by name: it runs, or it is a clear error
        raise cfg.ConfigError(f"backend {name}: not available on this machine ({reason}); "
                              f"available: {', '.join(available_backends())}")


def _check_socket_path(configured: str | None) -> None:
    from obproto import messages as m

    path = configured or m.default_socket_path()
    where = "socket" if configured else f"socket (default, from ${m.SOCKET_ENV}, " \
                                        f"$XDG_RUNTIME_DIR or the temp dir)"
    try:                # its directory is checked by bind: a missing or closed one is exit 2
        SocketPath().check(path)
    except Problem as exc:
        raise cfg.ConfigError(f"{where}: {exc}") from None
