"""Symbol naming: one normalised name per instrument, books named `exchange:SYMBOL`.

Exchanges spell one market many ways: Kraken v2 `BTC/USD` (v1 `XBT/USD`), Coinbase and OKX
`BTC-USD`, Binance and Bybit `BTCUSDT`. Clients ask for `BTCUSD` and must not care, so the
normalised form is the upper-case concatenation of base and quote with Kraken's legacy asset
codes mapped to the common ones. The exchange's own spelling (the "native" symbol) is kept in the
book's description in the segment; it is what goes on the wire.

This module lives in `obproto` because obclient resolves names too and imports only `obproto`.
It is pure string work, no I/O.
"""

EXCHANGES = ("binance", "binance-futures", "coinbase", "kraken", "okx", "bybit")

# Kraken's legacy asset codes (v1 and REST) and the common names the other venues use.
ASSET_ALIASES = {"XBT": "BTC", "XDG": "DOGE"}

# Quote currencies, longest first so that "BTCUSDT" splits as BTC/USDT and not BTCUSD/T. Only
# needed to turn a normalised name back into a separated native one. TUSD is left out on
# purpose: it would split XBTUSD as XB/TUSD.
QUOTES = tuple(
    sorted(
        ("USDT", "USDC", "FDUSD", "BUSD", "DAI", "USD", "EUR", "GBP", "JPY", "CHF",
         "CAD", "AUD", "TRY", "BRL", "BTC", "ETH", "XBT", "BNB", "SOL", "DOT"),
        key=len,
        reverse=True,
    )
)

_SEPARATORS = ("/", "-", "_")
SYMBOL_CHARS_MAX = 40


class SymbolError(ValueError):
    """A symbol that cannot be named: empty, too long, or with foreign characters."""


def normalise(symbol):
    """`BTC/USD`, `BTC-USD`, `XBT/USD`, `btcusd` -> `BTCUSD`; `BTCUSDT` stays `BTCUSDT`."""
    text = check_chars(symbol).upper()
    for sep in _SEPARATORS:
        if sep in text:
            parts = text.split(sep)
            return "".join(ASSET_ALIASES.get(part, part) for part in parts)
    base, quote = split_pair(text)
    if quote:
        return ASSET_ALIASES.get(base, base) + ASSET_ALIASES.get(quote, quote)
    return text


def book_name(exchange, symbol):
    """The book's public name: `kraken:BTCUSD`."""
    if exchange not in EXCHANGES:
        raise SymbolError(f"unknown exchange {exchange!r}; known: {', '.join(EXCHANGES)}")
    return f"{exchange}:{normalise(symbol)}"


def split_pair(text):
    """Split `BTCUSDT` into (`BTC`, `USDT`) by known quote suffix; (`text`, "") if none fits."""
    for sep in _SEPARATORS:
        if sep in text:
            base, _, quote = text.partition(sep)
            return base, quote
    for quote in QUOTES:
        if text.endswith(quote) and len(text) > len(quote):
            return text[: -len(quote)], quote
    return text, ""


def native(exchange, symbol):
    """The exchange's own spelling of a symbol given in either form.

    A symbol already written with a separator is taken as native and kept (only upper-cased).
    """
    text = check_chars(symbol).upper()
    if exchange in ("binance", "binance-futures", "bybit"):
        return "".join(text.split("/")).replace("-", "")
    if any(sep in text for sep in _SEPARATORS):
        return text
    base, quote = split_pair(text)
    if not quote:
        raise SymbolError(f"cannot split {symbol!r} into base and quote for {exchange}")
    if exchange == "kraken":
        return f"{ASSET_ALIASES.get(base, base)}/{ASSET_ALIASES.get(quote, quote)}"
    if exchange in ("coinbase", "okx"):
        return f"{base}-{quote}"
    raise SymbolError(f"unknown exchange {exchange!r}")


def check_chars(symbol):
    if not isinstance(symbol, str) or not symbol:
        raise SymbolError(f"symbol must be a non-empty string, got {symbol!r}")
    if len(symbol) > SYMBOL_CHARS_MAX:
        raise SymbolError(f"symbol longer than {SYMBOL_CHARS_MAX} characters: {symbol[:50]!r}")
    if not all(ch.isascii() and (ch.isalnum() or ch in "/-_.") for ch in symbol):
        raise SymbolError(f"symbol has characters other than letters, digits and / - _ .: {symbol!r}")
    return symbol
