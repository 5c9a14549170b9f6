"""The books of a relay, listed at start-up for a `nats` feed that names none.

Why at start-up: the segment is created once with every book (C2), so a mirror must know its
books before anything starts. A nats feed without `symbols` mirrors every book of its relay:
the supervisor lists them once, from the subjects of the relay's last-value stream (one
`STREAM.INFO` with a subject filter), and writes them into the feed's config, which the shard
processes then receive as if they had been configured. A book the relay starts publishing later
needs a restart of the mirror (or naming it in `symbols`).

This makes the start depend on NATS: unreachable servers, refused credentials or a relay
without a stream are one ConfigError line (exit 2) saying so and suggesting `symbols`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util

from observer.config import settings as cfg
from obproto import relay as wire

LIST_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 2
JS_TIMEOUT_S = 5.0
# nats-py's first connect goes round the server pool until every server has failed more than
# max_reconnect_attempts times, and 0 turns that limit off: a refused connect was retried every
# 2 s (its default wait) until LIST_TIMEOUT_S. With 1, each server is tried twice, this far apart.
CONNECT_RETRY_WAIT_S = 0.1


def with_relay_books(config: cfg.ObserverConfig) -> cfg.ObserverConfig:
    """`config` with every nats feed's empty `symbols` filled from its relay's stream."""
    feeds = list(config.feeds)
    for number, feed_cfg in enumerate(feeds, 1):
        if feed_cfg.exchange == "nats" and not feed_cfg.symbols:
            names = list_books(feed_cfg, f"feed #{number} (nats)")
            feeds[number - 1] = dataclasses.replace(feed_cfg, symbols=tuple(names))
    if feeds == list(config.feeds):
        return config
    return config.with_overrides(feeds=tuple(feeds))


def list_books(feed_cfg: cfg.FeedConfig, where: str) -> list[str]:
    """The relay's book names, sorted; ConfigError (one line) when they cannot be listed."""
    if importlib.util.find_spec("nats") is None:
        raise cfg.ConfigError(f"{where}: needs nats-py: pip install 'observer[nats]'")
    stream = wire.stream_name(feed_cfg.relay)
    try:
        names = asyncio.run(asyncio.wait_for(_list(feed_cfg, stream), LIST_TIMEOUT_S))
    except Exception as exc:          # nats-py raises many types; each means "cannot list"
        reason = (f"no answer within {LIST_TIMEOUT_S:g} s" if isinstance(exc, TimeoutError)
                  else str(exc) or type(exc).__name__)
        raise cfg.ConfigError(f"{where}: cannot list the books of relay {feed_cfg.relay} "
                              f"(stream {stream} on {', '.join(feed_cfg.url)}): {reason}; "
                              f"name them in symbols") from None
    if not names:
        raise cfg.ConfigError(f"{where}: relay {feed_cfg.relay} has no book in stream {stream} "
                              f"yet; name them in symbols")
    if len(names) > cfg.SYMBOLS_PER_FEED_MAX:
        raise cfg.ConfigError(f"{where}: relay {feed_cfg.relay} has {len(names)} books, more "
                              f"than symbols_per_feed_max={cfg.SYMBOLS_PER_FEED_MAX}")
    return sorted(names)


async def _list(feed_cfg: cfg.FeedConfig, stream: str) -> list[str]:
    import nats

    from observer.shard.natsmirror import tls_context

    connect_errors = []

    async def keep_quiet(exc) -> None:
        """nats-py's default logs each failed attempt with a traceback; the caller's one line
        says what failed."""
        connect_errors.append(exc)

    options = dict(servers=list(feed_cfg.url), connect_timeout=CONNECT_TIMEOUT_S,
                   allow_reconnect=False, max_reconnect_attempts=1,
                   reconnect_time_wait=CONNECT_RETRY_WAIT_S, error_cb=keep_quiet)
    tls = tls_context(feed_cfg)
    if tls is not None:
        options["tls"] = tls
    if feed_cfg.creds:
        options["user_credentials"] = feed_cfg.creds
    try:
        nc = await nats.connect(**options)
    except nats.errors.NoServersError:    # says less than why the last try failed
        if connect_errors:
            raise connect_errors[-1] from None
        raise
    try:
        info = await nc.jsm(timeout=JS_TIMEOUT_S).stream_info(
            stream, subjects_filter=wire.books_wildcard(feed_cfg.subject_prefix, feed_cfg.relay))
        names = []
        for subject in info.state.subjects or {}:
            _, name = wire.parse_subject(subject)
            if name is not None:
                names.append(name)
        return names
    finally:
        await nc.close()
