"""Convert the recorded exchange traffic into change lists the venues can serve today.

The recordings (real frames from 2021-2022, cryptofeed's `sample_data`, one event per line:
`<unix_ts>: <frame>`, REST replies as `<url> -> <unix_ts>: <body>`) are in older or different
formats than the ones the simulator serves (Kraken v1, Coinbase Exchange, Bybit
`orderBookL2_25`). What survives the conversion is the levels: each recorded book becomes an
initial book plus a list of events, each a list of `(side, price_text, size_text)`; the text is
then scaled to integers with the finest precision the symbol ever used, so no level is merged
or split. Symbols are renamed to the serving exchange's current form (Kraken `XBT` -> `BTC`).

Binance keeps its own sync rule here: only events after the recorded REST snapshot are used
(spot drops `u <= lastUpdateId`, futures drops `u < lastUpdateId`), which is how the recordings
were verified to sync with zero gaps.
"""

from __future__ import annotations

from pathlib import Path

import orjson

from obsim.book import ASK, BID, Instrument, decimals_of, parse_scaled

RawLevel = tuple[int, str, str]              # side, price text, size text
RECORDING_FILES = {
    "binance": ("BINANCE.ws.1.0", "BINANCE.http.0.0"),
    "binance-futures": ("BINANCE_FUTURES.ws.1.0", "BINANCE_FUTURES.http.0.0"),
    "kraken": ("KRAKEN.ws.50.0", None),
    "okx": ("OKX.ws.1.0", None),
    "coinbase": ("COINBASE.ws.28.0", None),
    "bybit": ("BYBIT.ws.26.0", None),
}


class Recorded:
    """One recorded symbol: its initial book and its events, as text until scaled."""

    def __init__(self) -> None:
        self.initial: list[RawLevel] = []
        self.events: list[list[RawLevel]] = []

    def scaled(self) -> tuple[Instrument, list, list]:
        levels = self.initial + [lv for event in self.events for lv in event]
        price_decimals = max((decimals_of(p) for _, p, _ in levels), default=0)
        size_decimals = max((decimals_of(s) for _, _, s in levels), default=0)
        inst = Instrument(price_decimals, size_decimals)

        def scale(raw: list[RawLevel]) -> list[tuple[int, int, int]]:
            return [(side, parse_scaled(p, price_decimals), parse_scaled(s, size_decimals))
                    for side, p, s in raw]
        return inst, scale(self.initial), [scale(event) for event in self.events]


def frames(path: Path):
    """Yield the decoded JSON of every received frame in a recording."""
    with open(path, "rb") as f:
        for line in f:
            head, sep, body = line.partition(b": ")
            if not sep or b" " in head:          # connection and sent-message lines
                continue
            try:
                yield orjson.loads(body)
            except orjson.JSONDecodeError:
                continue


def load(exchange: str, recordings_dir: Path) -> dict[str, tuple[Instrument, list, list]]:
    """native symbol -> (instrument, initial changes, events) for one exchange."""
    ws_name, http_name = RECORDING_FILES[exchange]
    ws_path = recordings_dir / ws_name
    if not ws_path.is_file():
        raise FileNotFoundError(f"recording {ws_name} not found in {recordings_dir}")
    loader = LOADERS[exchange]
    if http_name is not None:
        books = loader(ws_path, recordings_dir / http_name, exchange == "binance-futures")
    else:
        books = loader(ws_path)
    return {sym: rec.scaled() for sym, rec in books.items() if rec.initial and rec.events}


def pairs(levels, side: int) -> list[RawLevel]:
    return [(side, str(lv[0]), str(lv[1])) for lv in levels]


def load_binance(ws_path: Path, http_path: Path, futures: bool) -> dict[str, Recorded]:
    books: dict[str, Recorded] = {}
    last_ids: dict[str, int] = {}
    for line in open(http_path, "rb"):
        url, sep, rest = line.partition(b" -> ")
        if not sep:
            continue
        symbol = url.split(b"symbol=")[1].split(b"&")[0].decode()
        snap = orjson.loads(rest.partition(b": ")[2])
        rec = books[symbol] = Recorded()
        rec.initial = pairs(snap["bids"], BID) + pairs(snap["asks"], ASK)
        last_ids[symbol] = snap["lastUpdateId"]
    for frame in frames(ws_path):
        data = frame.get("data", frame) if isinstance(frame, dict) else None
        if not isinstance(data, dict) or data.get("e") != "depthUpdate" or data["s"] not in books:
            continue
        stale = data["u"] < last_ids[data["s"]] if futures else data["u"] <= last_ids[data["s"]]
        if not stale:
            books[data["s"]].events.append(pairs(data["b"], BID) + pairs(data["a"], ASK))
    return books


def kraken_symbol(pair: str) -> str:
    base, _, quote = pair.partition("/")
    rename = {"XBT": "BTC", "XDG": "DOGE"}
    return f"{rename.get(base, base)}/{rename.get(quote, quote)}"


def load_kraken(ws_path: Path) -> dict[str, Recorded]:
    """Kraken v1: [chan, {"as","bs"}, "book-N", pair] snapshots; updates carry "a"/"b"."""
    books: dict[str, Recorded] = {}
    for frame in frames(ws_path):
        if not isinstance(frame, list) or not str(frame[-2]).startswith("book"):
            continue
        symbol = kraken_symbol(frame[-1])
        parts = [p for p in frame[1:-2] if isinstance(p, dict)]
        if "as" in parts[0] or "bs" in parts[0]:
            rec = books[symbol] = Recorded()
            rec.initial = pairs(parts[0].get("bs", []), BID) + pairs(parts[0].get("as", []), ASK)
            continue
        if symbol in books:
            event: list[RawLevel] = []
            for part in parts:
                event += pairs(part.get("b", []), BID) + pairs(part.get("a", []), ASK)
            books[symbol].events.append(event)
    return books


def load_okx(ws_path: Path) -> dict[str, Recorded]:
    books: dict[str, Recorded] = {}
    for frame in frames(ws_path):
        if not isinstance(frame, dict) or frame.get("arg", {}).get("channel") != "books":
            continue
        if "data" not in frame:
            continue
        symbol = frame["arg"]["instId"]
        data = frame["data"][0]
        levels = pairs(data["bids"], BID) + pairs(data["asks"], ASK)
        if frame.get("action") == "snapshot":
            books[symbol] = Recorded()
            books[symbol].initial = levels
        elif symbol in books:
            books[symbol].events.append(levels)
    return books


def load_coinbase(ws_path: Path) -> dict[str, Recorded]:
    books: dict[str, Recorded] = {}
    for frame in frames(ws_path):
        kind = frame.get("type") if isinstance(frame, dict) else None
        if kind == "snapshot":
            rec = books[frame["product_id"]] = Recorded()
            rec.initial = pairs(frame["bids"], BID) + pairs(frame["asks"], ASK)
        elif kind == "l2update" and frame["product_id"] in books:
            event = [(BID if side == "buy" else ASK, p, s) for side, p, s in frame["changes"]]
            books[frame["product_id"]].events.append(event)
    return books


def load_bybit(ws_path: Path) -> dict[str, Recorded]:
    """Bybit orderBookL2_25: entries keyed by id with price and side; deletes carry no size."""
    books: dict[str, Recorded] = {}
    for frame in frames(ws_path):
        topic = frame.get("topic", "") if isinstance(frame, dict) else ""
        if not topic.startswith("orderBookL2_"):
            continue
        symbol = topic.rpartition(".")[2]
        if frame["type"] == "snapshot":
            books[symbol] = Recorded()
            books[symbol].initial = [bybit_level(e, e["size"]) for e in frame["data"]]
        elif symbol in books:
            data = frame["data"]
            event = [bybit_level(e, 0) for e in data.get("delete", [])]
            event += [bybit_level(e, e["size"]) for e in data.get("update", []) + data.get("insert", [])]
            books[symbol].events.append(event)
    return books


def bybit_level(entry: dict, size) -> RawLevel:
    return (BID if entry["side"] == "Buy" else ASK, str(entry["price"]), str(size))


LOADERS = {
    "binance": load_binance,
    "binance-futures": load_binance,
    "kraken": load_kraken,
    "okx": load_okx,
    "coinbase": load_coinbase,
    "bybit": load_bybit,
}
