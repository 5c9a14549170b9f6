"""obrelay under faults, with real processes: a stopped NATS server (coalescing within the
window), a receiver that joins late (last values from JetStream, then live), and the relay
killed and restarted (a new incarnation that receivers tell from a gap)."""

import time

from kit.procs import unique_name
from obproto import relay as wire
from relaykit import ExactnessCheck, RelayProcess, Subscriber, fetch_last_values

BOOKS = ("synthetic:BTCUSD", "synthetic:ETHUSD")
INFLIGHT_BYTES_MAX = 4096        # the smallest window: a stopped server fills it at once
PAUSE_S = 1.5                    # far below the relay's stale-server detection (6 s of pings)


def test_a_stopped_server_makes_the_relay_coalesce_within_its_window(nats_server, observer):
    name = unique_name("c")
    relay = RelayProcess(observer, nats_server.url, "--name", name, "--heartbeat-ms", "100",
                         "--inflight-bytes-max", str(INFLIGHT_BYTES_MAX), "--stats-s", "0.3",
                         workdir=observer.workdir)
    with Subscriber(nats_server.url, f"ob.{name}.>") as sub, relay:
        sub.run_until(lambda got: all(len(got.of(b)) >= 20 for b in BOOKS), "live books")
        coalesced_before = sub.got.heartbeats[-1].stats["coalesced"]
        nats_server.pause()
        paused_ns = time.time_ns()
        try:
            time.sleep(PAUSE_S)
        finally:
            nats_server.resume()
        resumed_ns = time.time_ns()
        sub.run_until(lambda got: got.heartbeats[-1].relay_ts_ns > resumed_ns
                      and got.heartbeats[-1].stats["dirty"] == 0
                      and all(got.of(b)[-1].relay_ts_ns > resumed_ns for b in BOOKS),
                      "messages and a heartbeat from after the pause")
        hb = sub.got.heartbeats[-1]
        relay.stop()
    largest = sub.got.largest_bytes
    stats = hb.stats
    assert stats["nats_reconnects"] == 0
    assert stats["coalesced"] > coalesced_before
    # never queued without bound: in flight stayed under the window, plus one of each message
    assert stats["inflight_bytes_peak"] <= INFLIGHT_BYTES_MAX + largest["book"] + largest["hb"]
    during = [m for _, m in sub.got.books if paused_ns <= m.relay_ts_ns <= resumed_ns]
    assert len(during) <= INFLIGHT_BYTES_MAX // 100   # a free-running relay would have sent ~300
    check = ExactnessCheck()
    for book in BOOKS:
        msgs = sub.got.of(book)
        seqs = [m.relay_seq for m in msgs]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))     # nothing lost
        assert any(b.book_seq - a.book_seq > 1 for a, b in zip(msgs, msgs[1:]))  # folded
        for msg in msgs:
            check.check(msg)
    assert "coalesced=" in relay.log_text()


def test_a_late_receiver_gets_every_book_from_the_stream_then_live(nats_server, observer):
    """The receiver procedure of docs/RELAY.md: subscribe, fetch the last values, let the
    sequencer order both; heartbeats name any book still behind."""
    name = unique_name("j")
    with RelayProcess(observer, nats_server.url, "--name", name, workdir=observer.workdir), \
            Subscriber(nats_server.url, f"ob.{name}.>") as early:
        early.run_until(lambda got: all(len(got.of(b)) >= 10 for b in BOOKS), "a relay at work")
        with Subscriber(nats_server.url, f"ob.{name}.>") as late:      # subscribed first
            fetched = late.call(fetch_last_values(late.nc, name))
            assert set(fetched) == set(BOOKS)
            late.run_until(lambda got: all(
                any(m.relay_seq > fetched[b].relay_seq for m in got.of(b)) for b in BOOKS)
                and got.heartbeats, "live messages after the fetched ones")
    sequencer = wire.BookSequencer()
    check = ExactnessCheck()
    for book in BOOKS:                        # the current state of every book at once
        assert sequencer.offer(fetched[book]) == wire.FIRST
        check.check(fetched[book])
    verdicts = {b: [] for b in BOOKS}
    for _, msg in late.got.books:             # then live: older ones dropped, never applied
        verdict = sequencer.offer(msg)
        verdicts[msg.name].append(verdict)
        if verdict in wire.APPLY:
            check.check(msg)
    for book in BOOKS:
        applied = [v for v in verdicts[book] if v in wire.APPLY]
        assert applied, f"{book}: no live message after the fetched one"
        # A join can miss only states published before it subscribed and not yet stored:
        # at most the first applied message jumps; every later one is the next.
        assert all(v == wire.NEXT for v in applied[1:])
        assert wire.OLD not in verdicts[book][verdicts[book].index(applied[0]):]
        assert sequencer.last(book)[1] == max(m.relay_seq for m in late.got.of(book))
    assert sequencer.behind(late.got.heartbeats[-1]) == []


def test_a_restarted_relay_is_a_new_incarnation_receivers_tell_from_a_gap(nats_server,
                                                                           observer):
    name = unique_name("r")
    args = ("--name", name, "--heartbeat-ms", "100")
    with Subscriber(nats_server.url, f"ob.{name}.>") as sub:
        with RelayProcess(observer, nats_server.url, *args, workdir=observer.workdir) as first:
            sub.run_until(lambda got: all(len(got.of(b)) >= 10 for b in BOOKS)
                          and got.heartbeats, "the first relay's books")
            first.kill()
        old_incarnation = sub.got.heartbeats[-1].incarnation
        cut = len(sub.got.books)
        with RelayProcess(observer, nats_server.url, *args, workdir=observer.workdir) as second:
            sub.run_until(lambda got: all(len([m for _, m in got.books[cut:] if m.name == b]) >= 10
                                          for b in BOOKS), "the second relay's books")
            second.stop()
    sequencer = wire.BookSequencer()
    verdicts = {b: [] for b in BOOKS}
    for _, msg in sub.got.books:
        verdicts[msg.name].append(sequencer.offer(msg))
    after = [m for _, m in sub.got.books[cut:]]
    new_incarnation = after[0].incarnation
    assert new_incarnation > old_incarnation
    assert {m.incarnation for m in after} == {new_incarnation}
    for book in BOOKS:
        assert verdicts[book].count(wire.RESTART) == 1
        assert wire.OLD not in verdicts[book]
        assert wire.GAP not in verdicts[book]
        assert [m.relay_seq for m in after if m.name == book][0] == 1
    assert sequencer.restarts == len(BOOKS)
    assert any(hb.incarnation == new_incarnation for hb in sub.got.heartbeats)
