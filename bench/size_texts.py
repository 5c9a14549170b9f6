"""How often a diff's size text was already seen: the real Binance recordings against obsim.

Why it matters: a parser that remembers decimal texts (observer.book.Book's pure-Python path
keeps a text -> int dict per book, `text_cache_max` entries) is only as fast as that dict's hit
rate, and a simulator that draws sizes from a small pool makes every benchmark of it
optimistic. This prints, per stream, the share of size and price texts the book's cache
already held when they arrived (the book is the real one, pure Python, its cache counted), over
the first levels of each symbol (as many as the recording has) and over a long obsim stream:

  recording  tests/data/recordings/BINANCE.ws.1.0 and BINANCE_FUTURES.ws.1.0 (real 2021 traffic),
             each symbol's depth updates in order
  obsim      obsim's Binance spot venue (in this process, its walk and its text rendering),
             BTCUSDT, 10 changes per event, 1000-level book

Usage: python bench/size_texts.py [--recordings DIR]   (default: tests/data/recordings)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
os.environ["OBSERVER_PURE_PYTHON"] = "1"     # the cache belongs to the pure-Python parser

import orjson  # noqa: E402

from observer.book import Book, BookError, BookUpdate  # noqa: E402
from obsim import cli as sim_cli  # noqa: E402
from obsim.binance import BinanceSpot  # noqa: E402

RECORDINGS_DEFAULT = Path(__file__).resolve().parents[1] / "tests" / "data" / "recordings"
OBSIM_LONG_LEVELS = 100_000


class CountingBook(Book):
    """A Book that counts the texts its cache missed (text_int runs only on a miss)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.misses = [0, 0]            # price, size

    def text_int(self, text, is_price):
        self.misses[0 if is_price else 1] += 1
        return super().text_int(text, is_price)


def hit_rates(diffs: list[tuple[list, list]]) -> tuple[float, float, int]:
    """(price hit rate, size hit rate, levels) of one symbol's diffs through a Book."""
    book = CountingBook("bench:X")
    levels = 0
    for bids, asks in diffs:
        levels += len(bids) + len(asks)
        try:
            book.apply(BookUpdate(False, bids, asks))
        except BookError:
            book.clear()               # crossed without its snapshot: keep counting texts
    if not levels:
        return 0.0, 0.0, 0
    return 1 - book.misses[0] / levels, 1 - book.misses[1] / levels, levels


def recorded(path: Path) -> dict[str, list]:
    """symbol -> [(bids, asks)] of the depth updates in one recording."""
    out: dict[str, list] = {}
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            head, sep, text = line.partition(": ")
            if not sep or " " in head or "depthUpdate" not in text:
                continue
            msg = orjson.loads(text)
            event = msg.get("data", msg)
            out.setdefault(event["s"], []).append((event["b"], event["a"]))
    return out


def obsim_diffs(levels_min: int) -> list[tuple[list, list]]:
    opts = sim_cli.parser().parse_args(["--exchanges", "binance", "--depth", "1000", "--seed", "7",
                                        "--changes-per-event", "10", "--rate", "1000"])
    venue = BinanceSpot(opts, ["BTCUSDT"], None)
    market = venue.markets["BTCUSDT"]
    out, levels = [], 0
    while levels < levels_min:
        bids, asks = venue.render_levels(market, market.source.step(market.book))
        event = orjson.loads(f'{{"b":[{bids}],"a":[{asks}]}}')
        out.append((event["b"], event["a"]))
        levels += len(event["b"]) + len(event["a"])
    return out


def first_levels(diffs: list, levels_n: int) -> list:
    out, levels = [], 0
    for bids, asks in diffs:
        if levels >= levels_n:
            break
        out.append((bids, asks))
        levels += len(bids) + len(asks)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recordings", type=Path, default=RECORDINGS_DEFAULT)
    args = p.parse_args(argv)
    sim = obsim_diffs(OBSIM_LONG_LEVELS)
    for name in ("BINANCE.ws.1.0", "BINANCE_FUTURES.ws.1.0"):
        path = args.recordings / name
        if not path.is_file():
            print(f"size_texts: {name} not found in {args.recordings}: skipped")
            continue
        for symbol, diffs in recorded(path).items():
            price, size, levels = hit_rates(diffs)
            if levels < 100:
                continue               # too few levels to say anything
            sim_price, sim_size, _ = hit_rates(first_levels(sim, levels))
            print(f"size_texts: {name:<22} {symbol:<10} {levels:>5} levels  cache hits: size "
                  f"{size:4.0%} price {price:4.0%}   obsim, same length: size {sim_size:4.0%} "
                  f"price {sim_price:4.0%}")
    price, size, levels = hit_rates(sim)
    print(f"size_texts: obsim BTCUSDT long stream     {levels:>6} levels  cache hits: size "
          f"{size:4.0%} price {price:4.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
