"""From configured feeds to book descriptors and the feed objects a shard runs.

Why a module of its own: the segment is created once with a fixed list of books (C2), so every
book must be known, named and checked before anything starts. This turns an `ObserverConfig`
into that list and into one feed object per `[[feed]]` table:

- Exchange feeds become an adapter (`observer.feeds.make_adapter`, endpoints and depth from the
  config, C10; feeds of one exchange split its REST budget, `rest_share`) wrapped in an `ExchangeFeed` (observer/shard/exchangefeed.py), which runs the session
  driver into the shard's writer. Synthetic feeds stay as they were.
- Books are named `exchange:SYMBOL` with the normalised symbol (`kraken:BTCUSD` for `XBT/USD`
  or `BTC/USD`); the exchange's own spelling goes into the descriptor's `native` field, which
  `obctl books` and describe show. Bybit's linear category is the exchange `bybit-linear`, so
  its books never collide with spot books of the same symbol.
- Two configured symbols that normalise to one book name are a `ConfigError`, as is a symbol
  the exchange module cannot spell: the process refuses to start rather than half-start.

Planning is apart from construction. `plan_books` turns names into book descriptors without
building any feed (no adapter, no socket, no NATS connection): the supervisor needs only
that. `build_feeds` builds the feed objects of a shard, each a `FeedSink` (observer/shard/feedsink.py)
with the one interface the shard runs; it asserts that the feeds hold exactly the planned books.

Every book is planned on shard 0 here; with --cores, observer/config/shardplan.py assigns each feed
(and so its books) to a shard afterwards, and each shard process plans its own share again.
"""

from __future__ import annotations

from typing import NamedTuple

from observer.config import settings as cfg
from obproto import symbols as symbol_names
from obproto.layout import NAME_BYTES_MAX, BookDesc

SHARD_INDEX = 0


def book_exchange(feed_cfg: cfg.FeedConfig) -> str:
    """The `exchange` part of the book names of a feed."""
    if feed_cfg.exchange == "bybit" and feed_cfg.category == "linear":
        return "bybit-linear"
    return feed_cfg.exchange


class FeedBooks(NamedTuple):
    """The books of one configured feed: (exchange, symbol, native) each, in feed order."""

    where: str
    books: tuple


def plan_books(config: cfg.ObserverConfig):
    """(book descriptors, {(exchange, symbol): book index}, FeedBooks per feed) for one shard.
    ConfigError for a name that cannot be a book, or a book configured twice."""
    descs, index_of, per_feed = [], {}, []
    for number, feed_cfg in enumerate(config.feeds, 1):
        where = f"feed #{number} ({feed_cfg.exchange})"
        books = feed_names(feed_cfg, where)
        for exchange, symbol, native in books:
            key = (exchange, symbol)
            if key in index_of:
                raise cfg.ConfigError(f"{where}: book {exchange}:{symbol} is configured twice")
            _check_name_bytes(exchange, symbol, native, where)
            index_of[key] = len(descs)
            descs.append(BookDesc(exchange, symbol, native, SHARD_INDEX))
        per_feed.append(FeedBooks(where, tuple(books)))
    return descs, index_of, per_feed


def feed_names(feed_cfg: cfg.FeedConfig, where: str) -> list:
    """(exchange, symbol, native) of each book of one feed, as its adapter will name them."""
    if feed_cfg.exchange == "synthetic":
        symbols = dict.fromkeys(s.upper() for s in feed_cfg.symbols)     # SyntheticFeed's rule
        return [("synthetic", s, s) for s in symbols]
    if feed_cfg.exchange == "nats":
        from observer.shard.natsfeed import mirrored_names
        return mirrored_names(feed_cfg, where)
    exchange = book_exchange(feed_cfg)
    out, seen = [], set()
    try:
        for given in feed_cfg.symbols:        # BaseAdapter's rule (observer/feeds/base.py)
            native = symbol_names.native(feed_cfg.exchange, given)
            symbol = symbol_names.normalise(native)
            if symbol in seen:
                raise ValueError(f"{feed_cfg.exchange}: symbol {given!r} listed twice")
            seen.add(symbol)
            out.append((exchange, symbol, native))
    except ValueError as exc:           # SymbolError is a ValueError, so are duplicate symbols
        raise cfg.ConfigError(f"{where}: {exc}") from None
    return out


def build_feeds(config: cfg.ObserverConfig, per_feed=None) -> list:
    """One feed object per configured feed (`per_feed`: plan_books's, or planned here)."""
    if per_feed is None:
        per_feed = plan_books(config)[2]
    feeds = []
    for feed_cfg, planned in zip(config.feeds, per_feed, strict=True):
        if feed_cfg.exchange == "synthetic":
            feed = _synthetic(config, feed_cfg)
        elif feed_cfg.exchange == "nats":
            from observer.shard.natsfeed import NatsFeed
            feed = NatsFeed(feed_cfg, planned.books, lag_bound_ms=config.lag_bound_ms)
        else:
            feed = _exchange(config, feed_cfg, planned.where)
        assert sorted(feed.book_keys()) == sorted((e, s) for e, s, _ in planned.books), \
            f"{planned.where}: the feed's books differ from the planned ones"
        feeds.append(feed)
    return feeds


def plan(config: cfg.ObserverConfig):
    """(book descriptors, feed objects, {(exchange, symbol): book index}) for one shard."""
    descs, index_of, per_feed = plan_books(config)
    return descs, build_feeds(config, per_feed), index_of


def _synthetic(config, feed_cfg):
    from observer.feeds.synthetic import SyntheticFeed
    from observer.shard.tickfeed import TickedFeed

    # The walk needs two levels a side to move; the segment publishes config.depth of them.
    depth = max(2, min(config.depth, feed_cfg.depth or config.depth))
    walk = SyntheticFeed(feed_cfg.symbols, rate_hz=feed_cfg.rate_hz, seed=feed_cfg.seed,
                         depth=depth)
    return TickedFeed(walk, lag_bound_ms=config.lag_bound_ms)


def rest_share(config, feed_cfg) -> float:
    """This feed's share of its exchange's REST weight budget, which the exchange counts per
    IP: feeds of one exchange (one REST origin) split it by their symbols, wherever they run
    (the exchange's used-weight header shows each what the others spent; the share keeps
    their first bursts from adding up past it)."""
    def origin(feed):
        return (feed.exchange, feed.rest_url)

    symbols_n = sum(len(feed.symbols) for feed in config.feeds if origin(feed) == origin(feed_cfg))
    return len(feed_cfg.symbols) / symbols_n


def _exchange(config, feed_cfg, where):
    from observer.shard.exchangefeed import ExchangeFeed
    from observer.feeds import adapter_class, make_adapter

    options = {}
    if hasattr(adapter_class(feed_cfg.exchange), "weight_per_minute"):  # REST snapshots, budgeted
        options["rest_weight_share"] = rest_share(config, feed_cfg)
    try:
        adapter = make_adapter(feed_cfg.exchange, list(feed_cfg.symbols), ws_url=feed_cfg.ws_url,
                               rest_url=feed_cfg.rest_url, depth=feed_cfg.depth or config.depth,
                               category=feed_cfg.category, **options)
    except ValueError as exc:           # SymbolError is a ValueError, so are duplicate symbols
        raise cfg.ConfigError(f"{where}: {exc}") from None
    return ExchangeFeed(adapter, book_exchange=book_exchange(feed_cfg), ca_file=feed_cfg.ca_file,
                        lag_bound_ms=config.lag_bound_ms)


def _check_name_bytes(exchange, symbol, native, where):
    for field, text in (("exchange", exchange), ("symbol", symbol), ("native", native)):
        if len(text.encode()) > NAME_BYTES_MAX[field]:
            raise cfg.ConfigError(f"{where}: {field} {text!r} is longer than "
                                  f"{NAME_BYTES_MAX[field]} bytes")
