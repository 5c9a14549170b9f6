"""obrelay end to end: a real observer, a real obrelay process, a real nats-server, a nats-py
subscriber that checks every message against the book the observer held at its update id."""

import obclient
from kit.procs import unique_name
from obproto import relay as wire
from relaykit import (RELAY_DEPTH, ExactnessCheck, RelayProcess, Subscriber, fetch_last_values,
                      levels_of, synthetic_observer)

BOOKS = ("synthetic:BTCUSD", "synthetic:ETHUSD")
MESSAGES_PER_BOOK = 60


def _check_stream_of_a_book(msgs, check: ExactnessCheck) -> None:
    """Contiguous relay_seq, increasing book_seq, live, exact."""
    seqs = [m.relay_seq for m in msgs]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert all(a.book_seq < b.book_seq for a, b in zip(msgs, msgs[1:]))
    assert all(not m.stale for m in msgs)
    for msg in msgs:
        check.check(msg)


def test_every_message_is_the_observers_book_at_its_update_id(nats_server, observer):
    name = unique_name("x")
    seen_by_obclient = {}
    with Subscriber(nats_server.url, f"ob.{name}.>") as sub, \
            RelayProcess(observer, nats_server.url, "--name", name, workdir=observer.workdir), \
            obclient.connect(observer.socket_path, stale_after_s=30) as client:
        def enough(got):
            for book in BOOKS:       # obclient's own copies, to compare with the messages
                snap = client.snapshot(book, RELAY_DEPTH)
                seen_by_obclient[(book, snap.update_id)] = (
                    list(zip(snap.bid_px.tolist(), snap.bid_sz.tolist())),
                    list(zip(snap.ask_px.tolist(), snap.ask_sz.tolist())))
            return all(len(got.of(b)) >= MESSAGES_PER_BOOK for b in BOOKS) and got.heartbeats
        sub.run_until(enough, f"{MESSAGES_PER_BOOK} messages of each book")
        generation = client.generation
    got = sub.got
    check = ExactnessCheck()
    for book in BOOKS:
        _check_stream_of_a_book(got.of(book), check)
    assert check.checked >= 2 * MESSAGES_PER_BOOK
    compared = 0
    for _, msg in got.books:
        assert msg.generation == generation
        if (msg.name, msg.update_id) in seen_by_obclient:
            assert levels_of(msg) == seen_by_obclient[(msg.name, msg.update_id)]
            compared += 1
    assert compared >= 1, "no message had an update id obclient also read"
    for subject, msg in got.books:
        assert subject == wire.book_subject("ob", name, msg.name)
        assert wire.parse_subject(subject) == (name, msg.name)
    hb = got.heartbeats[-1]
    assert hb.observer_up
    assert hb.generation == generation
    assert set(hb.books) == set(BOOKS)
    assert [h.hb_seq for h in got.heartbeats] == list(
        range(got.heartbeats[0].hb_seq, got.heartbeats[0].hb_seq + len(got.heartbeats)))


def test_books_glob_relays_only_the_matching_books(nats_server, observer):
    name = unique_name("g")
    with Subscriber(nats_server.url, f"ob.{name}.>") as sub, \
            RelayProcess(observer, nats_server.url, "--name", name, "--books", "Synthetic:ETH*",
                         workdir=observer.workdir):
        sub.run_until(lambda got: len(got.of("synthetic:ETHUSD")) >= 20
                      and any(hb.books for hb in got.heartbeats), "ETHUSD messages")
    assert {m.name for _, m in sub.got.books} == {"synthetic:ETHUSD"}
    assert set(next(hb for hb in sub.got.heartbeats if hb.books).books) == {"synthetic:ETHUSD"}


def test_a_clean_stop_leaves_every_book_stale_and_says_stopping(nats_server, observer):
    name = unique_name("s")
    relay = RelayProcess(observer, nats_server.url, "--name", name, workdir=observer.workdir)
    with Subscriber(nats_server.url, f"ob.{name}.>") as sub, relay:
        sub.run_until(lambda got: all(got.of(b) for b in BOOKS), "both books")
        assert relay.stop() == 0, relay.log_text()
        sub.run_until(lambda got: got.heartbeats and got.heartbeats[-1].stopping,
                      "the stopping heartbeat")
        last_values = sub.call(fetch_last_values(sub.nc, name, books_only=False))
    for book in BOOKS:
        assert sub.got.of(book)[-1].stale
        assert last_values[book].stale                 # what a late joiner would get
    assert last_values["_hb"].stopping


def test_observer_gone_books_stale_then_live_again_on_its_next_generation(nats_server, workdir):
    """kill -9 of the observer: every book is published stale and the heartbeat says the
    observer is down; a new observer on the same socket is followed, books live and exact."""
    name = unique_name("o")
    obs = synthetic_observer(workdir=str(workdir / name), name=name)
    (workdir / name).mkdir()
    try:
        obs.start()
        obs.wait_ready().close()
        with Subscriber(nats_server.url, f"ob.{name}.>") as sub, \
                RelayProcess(obs, nats_server.url, workdir=obs.workdir) as relay:
            sub.run_until(lambda got: all(len(got.of(b)) >= 5 for b in BOOKS), "live books")
            first_generation = sub.got.books[-1][1].generation
            obs.kill()
            sub.run_until(lambda got: all(got.of(b)[-1].stale for b in BOOKS)
                          and not got.heartbeats[-1].observer_up, "stale books, observer down")
            down = len(sub.got.books)
            obs.start()
            sub.run_until(lambda got: all(len([m for _, m in got.books[down:]
                                               if m.name == b and not m.stale]) >= 5
                                          for b in BOOKS), "live books of the next generation")
            assert relay.proc.poll() is None, relay.log_text()
        after = [m for _, m in sub.got.books[down:]]
        assert {m.generation for m in after} == {sub.got.books[-1][1].generation}
        assert after[0].generation != first_generation
        check = ExactnessCheck()      # the new observer's walks start again at update 1
        for book in BOOKS:
            msgs = [m for m in after if m.name == book]
            assert all(not m.stale for m in msgs)
            for msg in msgs:
                check.check(msg)
        seqs = [m.relay_seq for m in sub.got.of(BOOKS[0])]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))   # one incarnation throughout
    finally:
        obs.close()
