"""Which shard runs which feed: the partition behind `observer --cores LIST` (C1).

Why a module of its own: the segment is created once with every book's shard index in its
descriptor (C2), so the partition must be decided before anything starts, and it must be the
same in the supervisor (which writes the descriptors and marks a dead shard's books stale) and
in each shard process (which writes only its own books). Both call `partition` on the same
frozen config and get the same answer.

The unit is a configured feed (one `[[feed]]` table or `--feed`): its connections, its REST
snapshots and its books stay together on one loop. A feed with `shard = N` goes to shard N.
The others are spread by expected message rate, largest first onto the least loaded shard
(longest-processing-time first, within 4/3 of the best split), ties broken by order so the
result is deterministic. The expected rate is a per-symbol figure per exchange, from the
update speeds the exchanges document for the channels the adapters use (docs/EXCHANGES.md,
message rates); synthetic feeds declare theirs (`rate_hz`). It is an estimate for balance, not
a limit.
"""

from __future__ import annotations

from observer.config import settings as cfg

# Expected book messages per second per symbol, for balancing only.
EXPECTED_RATE_HZ = {
    "binance": 10.0,           # depth@100ms
    "binance-futures": 10.0,   # depth@100ms
    "coinbase": 50.0,          # level2, unthrottled
    "kraken": 20.0,
    "okx": 10.0,               # books, 100 ms
    "bybit": 20.0,             # orderbook.50 spot 20 ms / linear 10 ms, mostly quiet
}
SHARDS_MAX = 256


def expected_rate_hz(feed: cfg.FeedConfig) -> float:
    per_symbol = feed.rate_hz if feed.exchange == "synthetic" else EXPECTED_RATE_HZ[feed.exchange]
    return per_symbol * len(feed.symbols)


def partition(feeds, shards_n: int) -> list[int]:
    """The shard index of each feed, in the order given. ConfigError for a bad `shard = N`."""
    assert 1 <= shards_n <= SHARDS_MAX
    load = [0.0] * shards_n
    shard_of: list[int | None] = [None] * len(feeds)
    for i, feed in enumerate(feeds):
        if feed.shard is None:
            continue
        if not 0 <= feed.shard < shards_n:
            raise cfg.ConfigError(f"feed #{i + 1} ({feed.exchange}) asks for shard {feed.shard}, "
                                  f"but there are {shards_n} shard(s) (0..{shards_n - 1}): "
                                  f"one per --cores entry")
        shard_of[i] = feed.shard
        load[feed.shard] += expected_rate_hz(feed)
    free = sorted((i for i, s in enumerate(shard_of) if s is None),
                  key=lambda i: (-expected_rate_hz(feeds[i]), i))
    for i in free:
        target = min(range(shards_n), key=lambda s: (load[s], s))
        shard_of[i] = target
        load[target] += expected_rate_hz(feeds[i])
    return [int(s) for s in shard_of]


def check_cores(cores, allowed, where: str = "--cores") -> None:
    """A core that does not exist or is not allowed: a ConfigError naming the allowed ones.
    `where` names the place the cores came from (the flag, or the config file's key)."""
    allowed = sorted(allowed)
    bad = sorted(set(cores) - set(allowed))
    if bad:
        raise cfg.ConfigError(f"{where}: core(s) {','.join(map(str, bad))} do not exist or are "
                              f"not allowed for this process; allowed cores: "
                              f"{','.join(map(str, allowed))}")
    if len(cores) > SHARDS_MAX:
        raise cfg.ConfigError(f"{where}: {len(cores)} cores, more than shards_max={SHARDS_MAX}")


def assign(descs, feeds, index_of, shard_of) -> list:
    """`descs` with each book's shard index set from its feed's (feeds as feedplan.plan made
    them, one per configured feed and in the same order as `shard_of`)."""
    descs = list(descs)
    for feed, shard_index in zip(feeds, shard_of, strict=True):
        for symbol in feed.books:
            i = index_of[(feed.exchange, symbol)]
            descs[i] = descs[i]._replace(shard_index=shard_index)
    return descs
