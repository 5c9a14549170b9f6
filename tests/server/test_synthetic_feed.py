"""The synthetic feed: seeded, exact, never crossed, paced and bounded."""

from observer.book import ASK, BID
from observer.feeds.actions import Publish
from observer.feeds.synthetic import SyntheticFeed

NS = 1_000_000_000


def run(feed, seconds, step_ns=NS // 100):
    feed.start(0)
    for now_ns in range(step_ns, seconds * NS + 1, step_ns):
        feed.on_tick(now_ns)
        for book in feed.books.values():
            book.check()
            bid, _, ask, _ = book.best()
            assert bid < ask


def test_same_seed_same_books_other_seed_other_books():
    a, b, c = (SyntheticFeed(["BTCUSD", "ETHUSD"], rate_hz=500, seed=s) for s in (1, 1, 2))
    for feed in (a, b, c):
        run(feed, 2)
    for symbol in ("BTCUSD", "ETHUSD"):
        assert a.books[symbol].levels(BID) == b.books[symbol].levels(BID)
        assert a.books[symbol].levels(ASK) == b.books[symbol].levels(ASK)
    assert a.books["BTCUSD"].levels(BID) != c.books["BTCUSD"].levels(BID)


def test_books_are_exact_and_within_depth():
    feed = SyntheticFeed(["BTCUSD"], rate_hz=2000, seed=3, depth=8)
    run(feed, 3)
    book = feed.books["BTCUSD"]
    assert book.price_exp == -2
    assert book.size_exp == -4
    assert 0 < book.depth(BID) <= 8
    assert 0 < book.depth(ASK) <= 8
    assert all(size > 0 for _, size in book.levels(BID) + book.levels(ASK))


def test_rate_is_paced_by_the_clock_passed_in():
    feed = SyntheticFeed(["BTCUSD", "ETHUSD"], rate_hz=100, seed=1)
    assert feed.start(0) == [Publish("BTCUSD"), Publish("ETHUSD")]
    first = feed.update_id
    assert feed.on_tick(NS // 1000) == []                       # nothing due yet
    actions = feed.on_tick(NS)                                   # one second: 100 each
    assert actions == [Publish("BTCUSD"), Publish("ETHUSD")]
    assert feed.update_id - first == 2 * 64                     # capped per tick...
    assert feed.updates_skipped == 2 * (100 - 64)               # ...and the rest counted
    assert feed.next_deadline_ns() > NS


def test_a_stalled_caller_never_gets_an_unbounded_burst():
    feed = SyntheticFeed(["BTCUSD"], rate_hz=100_000, seed=1, updates_per_tick_max=10)
    feed.start(0)
    before = feed.update_id
    feed.on_tick(60 * NS)                                        # a minute late
    assert feed.update_id - before == 10
    assert feed.updates_skipped == 6_000_000 - 10                # 60 s at 100k/s, less 10
