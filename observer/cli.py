"""`observer`: the command that runs a supervisor and its shard(s) until SIGTERM or SIGINT.

    observer --feed synthetic:BTCUSD,ETHUSD [--rate N] [--seed S] [--socket PATH] [--name NAME]
    observer --feed binance:BTCUSDT,ETHUSDT --feed kraken:BTC/USD [--ca-file CA.pem]
    observer --config observer.toml [--cores 2,3] [--backend epoll] [--log-format json]

Why it is thin: configuration is observer/config/settings.py (one frozen ObserverConfig from a file and
flags), the long-lived objects are `Supervisor` and `Shard` (or `ShardManager`), and this module
only wires them on one loom loop and turns signals into a clean stop. Signals arrive through
`signal.set_wakeup_fd` on a socketpair that a fiber reads, so the stop runs as ordinary fiber
code (no work inside a signal handler, no interrupted loop internals). A clean stop removes the
socket file and closes the segment (a memfd, which never had a name).

Process model (C1). With `--cores LIST` (or `cores = [...]`) every listed core gets one shard
process (observer/process/shardproc.py, forked by the zygote, observer/process/zygote.py), pinned to it,
started and restarted by `ShardManager` (observer/process/shardmanager.py); feeds are partitioned across
them (observer/config/shardplan.py). The cores are
checked against the ones this process may use before anything is created, so a bad list leaves
nothing behind. Without --cores there is one shard, unpinned, in the supervisor's own process
and loop. Why not a child there too: with no core to isolate, a second process would buy only
crash isolation, at the price of a second interpreter and a pickled hand-over for the smallest
set-ups (a laptop, a test); a feed bug there is already contained to its fiber and marks its
books stale. Anyone who wants restarts asks for `--cores`.

Bad input: every key and flag is checked before anything is created (observer/config/commandline.py,
through observer/config/settings.py's key table), so a bad command line or file is one line on stderr
and exit 2, with nothing left behind.

Signals: `main` takes SIGINT and SIGTERM as its first act (observer/process/stopsignals.py), which is
why this module imports nothing heavy at its top: the time before `main` runs is time in which
a Ctrl-C would be Python's KeyboardInterrupt. While the arguments and the file are read, a
signal ends the process at once; from the moment anything is created it is a request to stop,
carried to the loop by the wakeup fd and served once start-up is complete, so the stop is
always the orderly one, and a second signal during it is only recorded.

Crashes: `main` enables `faulthandler` on stderr (the log) right after the signals: a fatal
signal (SIGSEGV, SIGBUS, SIGABRT, ...) in this process writes the Python stack of
every thread before the process dies, so a crash leaves its cause in the log instead of an
empty one (the zygote does the same, and its shards inherit it across fork). It is a C module
built into the interpreter: no import cost, nothing per message.

Exit codes: 0 after a clean stop by SIGTERM, 130 after a clean stop by SIGINT (Ctrl-C; 128 +
SIGINT, what shells report), 1 after a stop forced by the loss of a part that cannot be
replaced (the zygote, observer/process/zygote.py: a service manager should start a new generation), 2
for a bad command line or configuration (one line on stderr; a core that does not exist or is
not allowed names the allowed ones), 3 when another observer already holds the name or the
socket.
"""

from __future__ import annotations

import faulthandler
import os
import sys

from observer.process.stopsignals import Interrupted, StopSignals

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_RUNNING = 3


class StartError(RuntimeError):
    """The observer could not set itself up (segment, socket); nothing was left behind."""


def parse_args(argv):
    """The command line's flags, as text (observer/config/commandline.py)."""
    from observer.config import commandline

    return commandline.parse_args(argv)


def build_config(args):
    """The ObserverConfig in effect, every check made (observer/config/commandline.py)."""
    from observer.config import commandline

    return commandline.build_config(args)


def plan(config):
    """Book descriptors (shard indexes set), each book's planned books per feed (feedplan's
    FeedBooks), the book index of each (exchange, symbol), and the shard of each configured
    feed. Builds no feed: the shards do (observer/process/shardproc.py, or `run` without --cores)."""
    from observer.shard.feedplan import plan_books
    from observer.config.shardplan import assign, partition

    descs, index_of, per_feed = plan_books(config)
    shard_of = partition(config.feeds, len(config.cores) if config.cores else 1)
    return assign(descs, per_feed, index_of, shard_of), per_feed, index_of, shard_of


def run(config, stop: StopSignals) -> int:
    """Serve until a stop signal; the exit status of the stop. `stop` is installed (main)."""
    from observer import loom
    from observer.shard.runner import Shard
    from observer.process.supervisor import Supervisor
    from obproto import messages as m
    from obproto.layout import LayoutError

    if any(feed.exchange == "nats" and not feed.symbols for feed in config.feeds):
        from observer.shard.natsdiscover import with_relay_books

        config = with_relay_books(config)                  # the relay's books, from NATS
    descs, per_feed, index_of, shard_of = plan(config)    # a bad symbol: ConfigError, exit 2
    shards_n = len(config.cores) if config.cores else 1
    socket_path = config.socket or m.default_socket_path()
    stop.checkpoint()               # a signal kept during the imports above: stop, nothing made
    stop.hold()                     # from here on things exist that a stop must undo in order
    loop = supervisor = None
    try:
        try:
            loop = loom.Loop(backend=config.backend)
            supervisor = Supervisor(loop, name=config.name, book_descs=descs, shards_n=shards_n,
                                    depth_max=config.depth, socket_path=socket_path,
                                    allow_uids=config.allow_uids, allow_gids=config.allow_gids,
                                    client_limits=config.client_limits,
                                    shard_processes=config.cores is not None)
            supervisor.on_fatal = stop.request_stop   # stop as for a signal; `failure` says why
            if stop.signum is not None:         # stopped before anything was made: done
                return stop.exit_code(EXIT_OK)
            supervisor.start()
        except (LayoutError, loom.LoomError, ValueError, OSError) as exc:
            raise StartError(f"cannot start: {exc}") from exc
        if config.cores is None:      # one shard, in this process and loop (see the essay)
            from observer.shard.feedplan import build_feeds

            shard = Shard(0, supervisor.segment.writer(
                0, wake=config.wake, wake_ahead=config.wake_ahead),
                build_feeds(config, per_feed), index_of,
                wake_gap_us_per_client=config.wake_gap_us_per_client,
                slice_us=config.shard_slice_us)
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
    if supervisor.failure:
        print(f"observer: stopped: {supervisor.failure}", file=sys.stderr)
        return EXIT_FAILED
    return stop.exit_code(EXIT_OK)


def _shard_manager(loop, supervisor, config, descs, index_of, shard_of):
    """One ShardSpec per core: the config's feeds of that shard and their book indexes."""
    import logging

    from observer.telemetry.logs import log_event
    from observer.process.shardproc import ShardSpec
    from observer.process.shardmanager import ShardManager

    log = logging.getLogger("observer")
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


def _serve(loop, supervisor, shard, stop: StopSignals, socket_path) -> None:
    import logging

    from observer import loom
    from observer.telemetry.logs import log_event

    log = logging.getLogger("observer")
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
        _log_crash_stacks()
        code = _main(sys.argv[1:] if argv is None else argv, stop)
        stop.hold()
    except Interrupted:
        code = stop.exit_code(EXIT_OK)
    finally:
        stop.close()
    return code


def _log_crash_stacks() -> None:
    """A fatal signal writes every thread's stack to stderr (see the essay). Left as it is when
    already on (PYTHONFAULTHANDLER, a test runner calling main); a stderr with no file
    descriptor (closed, or a test's capture) has nowhere to write: nothing to enable."""
    if faulthandler.is_enabled():
        return
    try:
        faulthandler.enable(sys.stderr)
    except (RuntimeError, ValueError, OSError, AttributeError):
        pass


def _main(argv, stop: StopSignals) -> int:
    from observer.config import settings as cfg
    from observer.config.commandline import UsageError

    stop.checkpoint()                   # before the file is read, which may block (a pipe)
    try:
        config = build_config(parse_args(argv))
    except (UsageError, cfg.ConfigError) as exc:
        return _refuse(exc, EXIT_USAGE)
    from observer.telemetry import logs
    from observer.process.instance import AlreadyRunning
    from observer.server.control import SocketInUse

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
