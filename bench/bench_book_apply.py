"""Book apply + top-of-book read + top-50 export, ours against peers, in one seeded run.

The stream: a 1000-level-per-side book (prices as exchange text, 2 decimals), then messages of
10 level changes clustered near the top (random walk of the mid, ~20 % deletes, ~20 % new
levels), like a Binance @100ms diff event. After each message every contender reads the best
bid/ask and copies out the top 50 levels per side, as a publisher must.

Contenders (all fed the same decimal text):
- observer.book.Book: exact ints, bisect lists, export_top into int64 views.
- order-book (cryptofeed's C SortedDict book) with Decimal keys, as cryptofeed uses it.
- sortedcontainers.SortedDict with Decimal keys: the usual pure-Python sorted book.
- dict + sort on read: the re-sort that makes cryptofeed fall behind (docs/FIGURES.md section 1).

Prints one line per contender: µs per message and the ratio to ours (>1 = slower than ours);
then one line per leaf of the book (ns per call).
"""

import random
import sys
import time
from decimal import Decimal
from itertools import islice

import numpy as np

from observer.book import Book, BookUpdate

SEED = 20261122
LEVELS = 1000
MESSAGES = 4000
CHANGES = 10
TOP = 50


def make_stream():
    rng = random.Random(SEED)
    mid = 5_000_000  # cents
    bids = [(f"{(mid - 1 - i) / 100:.2f}", f"{rng.randint(1, 5000) / 1000:.3f}") for i in range(LEVELS)]
    asks = [(f"{(mid + 1 + i) / 100:.2f}", f"{rng.randint(1, 5000) / 1000:.3f}") for i in range(LEVELS)]
    messages = []
    for _ in range(MESSAGES):
        mid += rng.choice((-2, -1, 0, 0, 1, 2))
        b, a = [], []
        for _ in range(CHANGES):
            distance = int(rng.expovariate(1 / 15)) + 1
            size = "0" if rng.random() < 0.2 else f"{rng.randint(1, 5000) / 1000:.3f}"
            if rng.random() < 0.5:
                b.append((f"{(mid - distance) / 100:.2f}", size))
            else:
                a.append((f"{(mid + distance) / 100:.2f}", size))
        messages.append((b, a))
    return bids, asks, messages


def run_observer(bids, asks, messages):
    book = Book("bench:X", levels_max=1_000_000)
    book.apply(BookUpdate(True, bids, asks))
    views = np.zeros((4, TOP), dtype="<i8")
    bid_px, bid_sz, ask_px, ask_sz = views
    start = time.perf_counter_ns()
    for b, a in messages:
        try:
            book.apply(BookUpdate(False, b, a))
        except ValueError:
            pass  # a crossed walk: counted by the feed, not the benchmark's concern
        book.best()
        book.export_top(bid_px, bid_sz, ask_px, ask_sz)
    return time.perf_counter_ns() - start


def run_order_book(bids, asks, messages):
    from order_book import OrderBook

    book = OrderBook(max_depth=0)
    for p, s in bids:
        book.bids[Decimal(p)] = Decimal(s)
    for p, s in asks:
        book.asks[Decimal(p)] = Decimal(s)
    start = time.perf_counter_ns()
    for b, a in messages:
        for side, levels in ((book.bids, b), (book.asks, a)):
            for p, s in levels:
                price = Decimal(p)
                size = Decimal(s)
                if size:
                    side[price] = size
                elif price in side:
                    del side[price]
        book.bids.index(0)
        book.asks.index(0)
        [book.bids.index(i) for i in range(min(TOP, len(book.bids)))]
        [book.asks.index(i) for i in range(min(TOP, len(book.asks)))]
    return time.perf_counter_ns() - start


def run_sortedcontainers(bids, asks, messages):
    from sortedcontainers import SortedDict

    book_bids = SortedDict({-Decimal(p): Decimal(s) for p, s in bids})
    book_asks = SortedDict({Decimal(p): Decimal(s) for p, s in asks})
    start = time.perf_counter_ns()
    for b, a in messages:
        for side, levels, sign in ((book_bids, b, -1), (book_asks, a, 1)):
            for p, s in levels:
                price = sign * Decimal(p)
                size = Decimal(s)
                if size:
                    side[price] = size
                else:
                    side.pop(price, None)
        book_bids.peekitem(0)
        book_asks.peekitem(0)
        list(islice(book_bids.items(), TOP))
        list(islice(book_asks.items(), TOP))
    return time.perf_counter_ns() - start


def run_dict_sort(bids, asks, messages):
    book_bids = {Decimal(p): Decimal(s) for p, s in bids}
    book_asks = {Decimal(p): Decimal(s) for p, s in asks}
    start = time.perf_counter_ns()
    for b, a in messages:
        for side, levels in ((book_bids, b), (book_asks, a)):
            for p, s in levels:
                size = Decimal(s)
                if size:
                    side[Decimal(p)] = size
                else:
                    side.pop(Decimal(p), None)
        top_bids = sorted(book_bids, reverse=True)[:TOP]
        top_asks = sorted(book_asks)[:TOP]
        [(p, book_bids[p]) for p in top_bids]
        [(p, book_asks[p]) for p in top_asks]
    return time.perf_counter_ns() - start


def main():
    bids, asks, messages = make_stream()
    contenders = [("observer Book", run_observer), ("order-book (C, Decimal)", run_order_book),
                  ("sortedcontainers (Decimal)", run_sortedcontainers), ("dict + sort on read", run_dict_sort)]
    results = []
    for name, run in contenders:
        try:
            run(bids, asks, messages[:200])  # warm-up
            best_ns = min(run(bids, asks, messages) for _ in range(3))
        except ImportError as exc:
            print(f"bench_book_apply: {name:28s} skipped ({exc.name} not installed: pip install -e '.[bench]')")
            continue
        results.append((name, best_ns / MESSAGES / 1000))
    ours = results[0][1]
    for name, us in results:
        print(f"bench_book_apply: {name:28s} {us:8.2f} us/message ({CHANGES} levels, read top, export top {TOP})"
              f"  x{us / ours:5.2f} vs observer")
    bench_leaves(bids, asks)
    return 0


def bench_leaves(bids, asks):
    """The book's leaves on their own (arrays and scalars in, values out), on the same
    1000-level book."""
    from observer.book.book import side_export, side_set
    from observer.book.fixed import parse_decimal

    book = Book("bench:X", levels_max=1_000_000)
    book.apply(BookUpdate(True, bids, asks))
    keys, sizes = book._keys[0], book._sizes[0]
    best = keys[-1]
    out_px, out_sz = np.zeros(TOP, dtype="<i8"), np.zeros(TOP, dtype="<i8")
    calls = 20_000
    leaves = [
        ("side_set, change near top", lambda: side_set(keys, sizes, best - 3, 7)),
        ("side_set, insert+delete", lambda: (side_set(keys, sizes, best - 1, 7), side_set(keys, sizes, best - 1, 0))),
        (f"side_export, top {TOP}", lambda: side_export(keys, sizes, False, out_px, out_sz)),
        ("parse_decimal", lambda: parse_decimal("50000.12345678")),
        ("text_int (the cache-miss path)", lambda: book.text_int("49999.99", True)),
    ]
    for name, call in leaves:
        for _ in range(1000):
            call()
        start = time.perf_counter_ns()
        for _ in range(calls):
            call()
        ns = (time.perf_counter_ns() - start) / calls
        print(f"bench_book_apply: leaf {name:30s} {ns:8.0f} ns/call")


if __name__ == "__main__":
    sys.exit(main())
