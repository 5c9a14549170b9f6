"""observer.feeds: sans-IO exchange adapters (one module per exchange) and the session driver.

`make_adapter(exchange, symbols, ...)` builds the adapter of an exchange identifier
(`binance`, `binance-futures`, `coinbase`, `kraken`, `okx`, `bybit`); modules are imported
lazily so that using one exchange never imports the others.
"""

import importlib

ADAPTERS = {
    "binance": ("observer.feeds.binance", "BinanceAdapter"),
    "binance-futures": ("observer.feeds.binance_futures", "BinanceFuturesAdapter"),
    "coinbase": ("observer.feeds.coinbase", "CoinbaseAdapter"),
    "kraken": ("observer.feeds.kraken", "KrakenAdapter"),
    "okx": ("observer.feeds.okx", "OkxAdapter"),
    "bybit": ("observer.feeds.bybit", "BybitAdapter"),
}


def adapter_class(exchange):
    try:
        module_name, class_name = ADAPTERS[exchange]
    except KeyError:
        raise ValueError(f"unknown exchange {exchange!r}; known: {', '.join(ADAPTERS)}") from None
    return getattr(importlib.import_module(module_name), class_name)


def make_adapter(exchange, symbols, *, ws_url=None, rest_url=None, depth=0, category=None, **options):
    """The adapter for one configured feed. `depth` is the depth to publish: exchanges with a
    fixed set of subscription depths get the smallest one that covers it."""
    cls = adapter_class(exchange)
    if category is not None:
        if exchange != "bybit":
            raise ValueError(f"'category' applies to bybit only, not {exchange}")
        options["category"] = category
    if depth and hasattr(cls, "subscription_depths"):
        options["depth"] = cover_depth(depth, cls.subscription_depths(options.get("category", "spot")))
    elif depth:
        options["depth"] = depth  # full-depth feeds: what must stay vouched for (Binance)
    return cls(symbols, ws_url=ws_url, rest_url=rest_url, **options)


def cover_depth(depth, allowed):
    """The smallest allowed depth >= depth, else the largest allowed."""
    fitting = [d for d in sorted(allowed) if d >= depth]
    return fitting[0] if fitting else max(allowed)
