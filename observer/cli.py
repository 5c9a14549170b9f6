"""`observer`: the command that runs a supervisor and its shard(s) until SIGTERM or SIGINT.

    observer --feed synthetic:BTCUSD,ETHUSD [--rate N] [--seed S] [--socket PATH] [--name NAME]
    observer --feed binance:BTCUSDT,ETHUSDT --feed kraken:BTC/USD [--ca-file CA.pem]
    observer --config observer.toml [--cores 2,3] [--backend epoll] [--log-format json]

Why it is thin: configuration is observer/config.py (one frozen ObserverConfig from a file and
flags), the long-lived objects are `Supervisor` and `Shard` (or `ShardManager`), and this module
only wires them on one loom loop and turns signals into a clean stop. Signals arrive through
`signal.set_wakeup_fd` on a socketpair that a fiber reads, so the stop runs as ordinary fiber
code (no work inside a signal handler, no interrupted loop internals). A clean stop removes the
socket file and closes the segment, whose name was already unlinked at start-up.

Process model (C1). With `--cores LIST` (or `cores = [...]`) every listed core gets one shard
process (observer/shardproc.py), pinned to it, started and restarted by `ShardManager`
(observer/shards.py); feeds are partitioned across them (observer/shardplan.py). The cores are
checked against the ones this process may use before anything is created, so a bad list leaves
nothing behind. Without --cores there is one shard, unpinned, in the supervisor's own process
and loop. Why not a child there too: with no core to isolate, a second process would buy only
crash isolation, at the price of a second interpreter and a pickled hand-over for the smallest
set-ups (a laptop, a test); a feed bug there is already contained to its fiber and marks its
books stale. Anyone who wants restarts asks for `--cores`.

Bad input: every key and flag is checked through observer/config.py's key table before anything
is created, so a bad command line or file is one line on stderr and exit 2, with nothing left
behind. The checks that depend on this machine are made here too: the cores exist and are
allowed, the forced backend runs here, the socket path fits a unix socket and its directory
exists.

Signals: `main` takes SIGINT and SIGTERM as its first act (observer/stopsignals.py). While the
arguments and the file are read, a signal ends the process at once; from the moment anything
is created it is a request to stop, carried to the loop by the wakeup fd, served after start-up
completes, so the stop is always the orderly one and a second signal is only recorded.

Exit codes: 0 after a clean stop by SIGTERM, 130 after a clean stop by SIGINT (Ctrl-C; 128 +
SIGINT, what shells report), 2 for a bad command line or configuration (one line on stderr; a
core that does not exist or is not allowed names the allowed ones), 3 when another observer
already holds the name or the socket.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

from observer import config as cfg
from observer.configkinds import Problem, SocketPath
from observer.logs import log_event
from observer.stopsignals import Interrupted, StopSignals

log = logging.getLogger("observer")

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_RUNNING = 3


class UsageError(Exception):
    """A command line argparse cannot read (unknown flag, missing value, flag given twice)."""


class StartError(RuntimeError):
    """The observer could not set itself up (segment, socket); nothing was left behind."""


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
        p.add_argument(key.flag, dest=_dest(key), action=_Once,
                       metavar="{" + ",".join(options) + "}" if options else key.name.upper(),
                       help=key.meaning + (" (in a config file: `[observer] {0}`)".format(key.name)
                                           if key in cfg.OBSERVER_KEYS else ""))
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
    _check_here(config)
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


def _check_here(config: cfg.ObserverConfig) -> None:
    """What depends on this machine: feeds, cores, backend, socket path. Nothing is created."""
    if not config.feeds:
        raise cfg.ConfigError("no feeds: give --feed EXCHANGE:SYMBOLS or a --config file with "
                              "[[feed]] tables")
    if config.cores is not None:
        from observer.loom.pin import allowed_cores
        from observer.shardplan import check_cores, partition

        check_cores(config.cores, allowed_cores())
        partition(config.feeds, len(config.cores))
    elif any(f.shard not in (None, 0) for f in config.feeds):
        raise cfg.ConfigError("a feed names a shard other than 0, but without --cores (or "
                              "`cores`) there is one shard")
    if config.backend is not None:
        _check_backend(config.backend)
    _check_socket_path(config.socket)


def _check_backend(name: str) -> None:
    from observer.loom.backend import FALLBACK, available_backends, unavailable_reason

    reason = unavailable_reason(name)
    if reason is not None and name not in FALLBACK:      # a refused io_uring runs on epoll
        raise cfg.ConfigError(f"backend {name}: not available on this machine ({reason}); "
                              f"available: {', '.join(available_backends())}")


def _check_socket_path(configured: str | None) -> None:
    from proto import messages as m

    path = configured or m.default_socket_path()
    where = "socket" if configured else f"socket (default, from ${m.SOCKET_ENV}, " \
                                        f"$XDG_RUNTIME_DIR or the temp dir)"
    try:
        SocketPath().check(path)
    except Problem as exc:
        raise cfg.ConfigError(f"{where}: {exc}") from None
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise cfg.ConfigError(f"{where}: directory {directory!r} of {path!r} does not exist")


def plan(config: cfg.ObserverConfig):
    """Book descriptors (shard indexes set), the feed objects that fill them, the book index of
    each (exchange, symbol), and the shard of each configured feed."""
    from observer.feedplan import plan as feed_plan
    from observer.shardplan import assign, partition

    descs, feeds, index_of = feed_plan(config)
    shard_of = partition(config.feeds, len(config.cores) if config.cores else 1)
    return assign(descs, feeds, index_of, shard_of), feeds, index_of, shard_of


def run(config: cfg.ObserverConfig, stop: StopSignals) -> int:
    """Serve until a stop signal; the exit status of the stop. `stop` is installed (main)."""
    from observer import loom
    from observer.shard import Shard
    from observer.supervisor import Supervisor
    from proto import messages as m
    from proto.layout import LayoutError

    descs, feeds, index_of, shard_of = plan(config)       # a bad symbol: ConfigError, exit 2
    shards_n = len(config.cores) if config.cores else 1
    socket_path = config.socket or m.default_socket_path()
    stop.hold()                     # from here on things exist that a stop must undo in order
    loop = supervisor = None
    try:
        try:
            loop = loom.Loop(backend=config.backend)
            supervisor = Supervisor(loop, name=config.name, book_descs=descs, shards_n=shards_n,
                                    depth_max=config.depth, socket_path=socket_path,
                                    allow_uids=config.allow_uids, allow_gids=config.allow_gids)
            if stop.signum is not None:         # stopped before anything was made: done
                return stop.exit_code(EXIT_OK)
            supervisor.start()
        except (LayoutError, loom.LoomError, ValueError, OSError) as exc:
            raise StartError(f"cannot start: {exc}") from exc
        if config.cores is None:      # one shard, in this process and loop (see the essay)
            shard = Shard(0, supervisor.segment.writer(
                0, wake=config.wake, wake_ahead=config.wake_ahead), feeds, index_of)
        else:
            shard = supervisor.shard_manager = _shard_manager(loop, supervisor, config, descs,
                                                              index_of, shard_of)
        loop.run(_serve, loop, supervisor, shard, stop, socket_path)
    finally:
        if supervisor is not None:
            if supervisor.shard_manager is not None:
                supervisor.shard_manager.kill_all()      # no shard outlives a failed stop
            supervisor.stop()
        if loop is not None:
            loop.close()
    return stop.exit_code(EXIT_OK)


def _shard_manager(loop, supervisor, config, descs, index_of, shard_of):
    """One ShardSpec per core: the config's feeds of that shard and their book indexes."""
    from observer.shardproc import ShardSpec
    from observer.shards import ShardManager

    specs = []
    for i, core in enumerate(config.cores):
        mine = tuple(f for f, s in zip(config.feeds, shard_of) if s == i)
        books = {key: b for key, b in index_of.items() if descs[b].shard_index == i}
        specs.append(ShardSpec(name=config.name, shard_index=i, core=core,
                               config=config.with_overrides(feeds=mine), book_index_of=books,
                               shm_fd=supervisor.segment.fd,
                               eventfds=tuple(supervisor.segment.eventfds),
                               parent_pid=os.getpid()))
        if not mine:
            log_event(log, "shard_idle", level=logging.WARNING, shard=i, core=core,
                      reason="more cores than feeds")
    return ShardManager(loop, supervisor, specs)


def _serve(loop, supervisor, shard, stop: StopSignals, socket_path) -> None:
    from observer import loom

    if stop.signum is None:             # a signal during start-up: stop without starting feeds
        shard.start(loop)
        log_event(log, "observer_ready", instance=supervisor.name, socket=socket_path,
                  books=len(supervisor.book_descs), shards=supervisor.shards_n, pid=os.getpid(),
                  backend=loop.backend_name)
    signum = loom.recv(stop.reader, 1)  # the wakeup fd's byte: the signal's number
    log_event(log, "observer_stopping", signal=signum[0] if signum else 0)
    shard.stop()
    supervisor.stop()
    loop.stop()


def main(argv=None) -> int:
    """Run the observer command; returns its exit status (see the essay)."""
    stop = StopSignals()
    try:
        stop.install()                  # first: from here on a signal is a clean stop
        code = _main(sys.argv[1:] if argv is None else argv, stop)
        stop.hold()
    except Interrupted:
        code = stop.exit_code(EXIT_OK)
    finally:
        stop.close()
    return code


def _main(argv, stop: StopSignals) -> int:
    from observer.instance import AlreadyRunning
    from observer.server.control import SocketInUse

    try:
        config = build_config(parse_args(argv))
    except (UsageError, cfg.ConfigError) as exc:
        return _refuse(exc, EXIT_USAGE)
    from observer import logs

    logs.setup(config.log_format, config.log_level)
    try:
        return run(config, stop)
    except (AlreadyRunning, SocketInUse) as exc:
        return _refuse(exc, EXIT_RUNNING)
    except (StartError, cfg.ConfigError) as exc:
        return _refuse(exc, EXIT_USAGE)


def _refuse(exc: Exception, code: int) -> int:
    print(f"observer: {exc}", file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
