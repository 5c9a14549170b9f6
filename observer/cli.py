"""`observer`: the command that runs a supervisor and its shard(s) until SIGTERM or SIGINT.

    observer --feed synthetic:BTCUSD,ETHUSD [--rate N] [--seed S] [--socket PATH] [--name NAME]
    observer --feed binance:BTCUSDT,ETHUSDT --feed kraken:BTC/USD [--ca-file CA.pem]
    observer --config observer.toml [--cores 2,3] [--backend epoll] [--log-format json]

Why it is thin: configuration is observer/config.py (one frozen ObserverConfig from a file and
flags), the long-lived objects are `Supervisor` and `Shard` (or `ShardManager`), and this module
only wires them on one loom loop and turns signals into a clean stop. Signals arrive through
`signal.set_wakeup_fd` on a socketpair that a fiber reads, so the stop runs as ordinary fiber
code (no work inside a signal handler, no interrupted loop internals). A clean stop removes the
socket file and closes the segment (a memfd, which never had a name).

Process model (C1). With `--cores LIST` (or `cores = [...]`) every listed core gets one shard
process (observer/shardproc.py, forked by the zygote, observer/zygote.py), pinned to it,
started and restarted by `ShardManager` (observer/shards.py); feeds are partitioned across
them (observer/shardplan.py). The cores are
checked against the ones this process may use before anything is created, so a bad list leaves
nothing behind. Without --cores there is one shard, unpinned, in the supervisor's own process
and loop. Why not a child there too: with no core to isolate, a second process would buy only
crash isolation, at the price of a second interpreter and a pickled hand-over for the smallest
set-ups (a laptop, a test); a feed bug there is already contained to its fiber and marks its
books stale. Anyone who wants restarts asks for `--cores`.

Exit codes: 0 after a clean stop, 1 after a stop forced by the loss of a part that cannot be
replaced (the zygote, observer/zygote.py: a service manager should start a new generation), 2
for a bad command line or configuration (one line on stderr; a core that does not exist or is
not allowed names the allowed ones), 3 when another observer already holds the name or the
socket.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import socket
import sys

from observer import config as cfg
from observer import logs
from observer.logs import log_event
from observer.instance import AlreadyRunning
from observer.server.control import SocketInUse
from proto import messages as m
from proto.layout import LayoutError

log = logging.getLogger("observer")

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_RUNNING = 3


class StartError(RuntimeError):
    """The observer could not set itself up (segment, socket); nothing was left behind."""


def parse_args(argv):
    p = argparse.ArgumentParser(prog="observer", description="Shared-memory L2 order book server.")
    p.add_argument("--config", help="TOML configuration file")
    p.add_argument("--feed", action="append", default=[],
                   help="EXCHANGE:SYMBOL[,SYMBOL...], e.g. synthetic:BTCUSD,ETHUSD (repeatable)")
    p.add_argument("--rate", type=float, help="synthetic feeds: updates per second per symbol")
    p.add_argument("--seed", type=int, help="synthetic feeds: random seed")
    p.add_argument("--socket", help=f"control socket path (default: ${m.SOCKET_ENV}, else "
                   f"{m.SOCKET_FILE} in $XDG_RUNTIME_DIR or the temp dir)")
    p.add_argument("--name", help="instance name (one live observer per name)")
    p.add_argument("--depth", type=int, help="levels per side published")
    p.add_argument("--ca-file", help="extra CA file trusted by --feed feeds (e.g. obsim's)")
    p.add_argument("--lag-bound-ms", type=float,
                   help="a book further behind its exchange than this is published as lagging")
    p.add_argument("--cores", help="one pinned shard process per core, e.g. 2,3 or 0-3 "
                   "(default: one unpinned shard in the supervisor's process)")
    p.add_argument("--backend", help="force a loom backend (io_uring, epoll)")
    p.add_argument("--wake", choices=("auto", "eventfd", "io_uring"),
                   help="how a shard wakes clients: write its eventfd, or have an io_uring "
                   "worker write it (the shard's cost then does not grow with clients); auto "
                   "(default): the first below 16 attached clients, the second from there")
    p.add_argument("--no-wake-ahead", dest="wake_ahead", action="store_const", const=False,
                   help="do not wake clients when a message arrives, only after it is "
                   "published (for hosts whose clients all busy-poll)")
    p.add_argument("--log-format", choices=("text", "json"))
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    return p.parse_args(argv)


def build_config(args) -> cfg.ObserverConfig:
    config = cfg.load_config(args.config) if args.config else cfg.ObserverConfig()
    feeds = [cfg.parse_feed_spec(spec, ca_file=args.ca_file) for spec in args.feed]
    config = config.with_overrides(
        name=args.name, socket=args.socket, depth=args.depth, backend=args.backend, wake=args.wake,
        wake_ahead=args.wake_ahead,
        log_format=args.log_format, log_level=args.log_level, lag_bound_ms=args.lag_bound_ms,
        feeds=tuple(feeds) if feeds else None,
        cores=cfg.parse_cores(args.cores) if args.cores is not None else None)
    synthetic = {"rate_hz": args.rate, "seed": args.seed}
    config = config.with_overrides(feeds=tuple(
        _override(f, synthetic) if f.exchange == "synthetic" else f for f in config.feeds))
    cfg.validate(config, where="command line")
    if not config.feeds:
        raise cfg.ConfigError("no feeds: give --feed EXCHANGE:SYMBOLS or a --config file")
    if config.cores is not None:      # before anything is created: nothing to leave behind
        from observer.loom.pin import allowed_cores
        from observer.shardplan import check_cores, partition

        check_cores(config.cores, allowed_cores())
        partition(config.feeds, len(config.cores))
    elif any(f.shard not in (None, 0) for f in config.feeds):
        raise cfg.ConfigError("a feed names a shard other than 0, but without --cores (or "
                              "`cores`) there is one shard")
    return config


def _override(feed: cfg.FeedConfig, values: dict) -> cfg.FeedConfig:
    changes = {k: v for k, v in values.items() if v is not None}
    if changes.get("rate_hz", 1) <= 0:
        raise cfg.ConfigError("--rate must be positive")
    return dataclasses.replace(feed, **changes)


def plan(config: cfg.ObserverConfig):
    """Book descriptors (shard indexes set), the feed objects that fill them, the book index of
    each (exchange, symbol), and the shard of each configured feed."""
    from observer.feedplan import plan as feed_plan
    from observer.shardplan import assign, partition

    descs, feeds, index_of = feed_plan(config)
    shard_of = partition(config.feeds, len(config.cores) if config.cores else 1)
    return assign(descs, feeds, index_of, shard_of), feeds, index_of, shard_of


def run(config: cfg.ObserverConfig) -> int:
    from observer import loom
    from observer.shard import Shard
    from observer.supervisor import Supervisor

    descs, feeds, index_of, shard_of = plan(config)
    shards_n = len(config.cores) if config.cores else 1
    loop = loom.Loop(backend=config.backend)
    socket_path = config.socket or m.default_socket_path()
    supervisor = Supervisor(loop, name=config.name, book_descs=descs, shards_n=shards_n,
                            depth_max=config.depth, socket_path=socket_path,
                            allow_uids=config.allow_uids, allow_gids=config.allow_gids,
                            shard_processes=config.cores is not None)
    wake_r, wake_w = socket.socketpair()
    wake_w.setblocking(False)
    old_wakeup_fd = signal.set_wakeup_fd(wake_w.fileno())
    old_handlers = {s: signal.signal(s, _note_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    supervisor.on_fatal = lambda: wake_w.send(b"\0")   # stop as for a signal; failure says why
    try:
        try:
            supervisor.start()
        except (LayoutError, ValueError, OSError) as exc:
            raise StartError(f"cannot start: {exc}") from exc
        if config.cores is None:      # one shard, in this process and loop (see the essay)
            shard = Shard(0, supervisor.segment.writer(
                0, wake=config.wake, wake_ahead=config.wake_ahead), feeds, index_of)
        else:
            shard = supervisor.shard_manager = _shard_manager(loop, supervisor, config, descs,
                                                              index_of, shard_of)
        loop.run(_serve, loop, supervisor, shard, wake_r, socket_path)
    finally:
        if supervisor.shard_manager is not None:
            supervisor.shard_manager.kill_all()      # no shard outlives a failed stop
        supervisor.stop()
        signal.set_wakeup_fd(old_wakeup_fd)
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        wake_r.close()
        wake_w.close()
        loop.close()
    if supervisor.failure:
        print(f"observer: stopped: {supervisor.failure}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _note_signal(signum, frame) -> None:
    """The wakeup fd carries the signal to the loop; nothing to do here."""


def _shard_manager(loop, supervisor, config, descs, index_of, shard_of):
    """One ShardSpec per core: the config's feeds of that shard and their book indexes."""
    from observer.shardproc import ShardSpec
    from observer.shards import ShardManager

    specs = []
    for i, core in enumerate(config.cores):
        mine = tuple(f for f, s in zip(config.feeds, shard_of) if s == i)
        books = {key: b for key, b in index_of.items() if descs[b].shard_index == i}
        specs.append(ShardSpec(name=config.name, shard_index=i, core=core,
                               config=config.with_overrides(feeds=mine), book_index_of=books))
        if not mine:
            log_event(log, "shard_idle", level=logging.WARNING, shard=i, core=core,
                      reason="more cores than feeds")
    return ShardManager(loop, supervisor, supervisor.zygote, specs)


def _serve(loop, supervisor, shard, wake_r, socket_path) -> None:
    from observer import loom

    shard.start(loop)
    log_event(log, "observer_ready", instance=supervisor.name, socket=socket_path,
              books=len(supervisor.book_descs), shards=supervisor.shards_n, pid=os.getpid(),
              backend=loop.backend_name)
    signum = loom.recv(wake_r, 1)
    log_event(log, "observer_stopping", signal=signum[0] if signum else 0)
    shard.stop()
    supervisor.stop()
    loop.stop()


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = build_config(args)
    except cfg.ConfigError as exc:
        print(f"observer: {exc}", file=sys.stderr)
        return EXIT_USAGE
    logs.setup(config.log_format, config.log_level)
    try:
        return run(config)
    except (AlreadyRunning, SocketInUse) as exc:
        print(f"observer: {exc}", file=sys.stderr)
        return EXIT_RUNNING
    except (StartError, cfg.ConfigError) as exc:
        print(f"observer: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    raise SystemExit(main())
