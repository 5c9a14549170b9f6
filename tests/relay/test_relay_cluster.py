"""obrelay on a 3-node NATS cluster with JetStream: the node the relay is connected to is
killed; the relay reconnects to another, books keep flowing exact, and the replicated
last-value stream still serves a late joiner."""

import shutil

import pytest

from natskit import NatsCluster, tempdir
from kit.procs import unique_name, wait_until
from relaykit import (WAIT_S, ExactnessCheck, RelayProcess, Subscriber, fetch_last_values,
                      synthetic_observer)

BOOKS = ("synthetic:BTCUSD", "synthetic:ETHUSD")


@pytest.fixture(scope="module")
def cluster(workdir):
    root = tempdir("obcluster-")
    nodes = NatsCluster(root)
    try:
        yield nodes.start()
    finally:
        nodes.close()
        shutil.rmtree(root, ignore_errors=True)


def test_killing_the_relays_node_moves_it_to_another_and_books_keep_flowing(cluster, workdir):
    name = unique_name("k")
    obs = synthetic_observer(workdir=str(workdir / name), name=name)
    (workdir / name).mkdir()
    try:
        obs.start()
        obs.wait_ready().close()
        relay = RelayProcess(obs, cluster.urls, "--heartbeat-ms", "100", "--stream-replicas",
                             "3", workdir=obs.workdir)
        with relay, Subscriber(cluster.urls[0], f"ob.{name}._hb") as probe:
            probe.run_until(lambda got: relay_alive(relay) and got.heartbeats
                            and got.heartbeats[-1].books, "the relay's first heartbeats",
                            timeout_s=90)
            relay_node = cluster.node_at(probe.got.heartbeats[-1].stats["nats_server"])
            other = next(node for node in cluster.nodes if node is not relay_node)
            with Subscriber(other.url, f"ob.{name}.>") as sub:    # never on the killed node
                sub.run_until(lambda got: all(len(got.of(b)) >= 10 for b in BOOKS), "books")
                cut = len(sub.got.books)
                killed_url = relay_node.url
                relay_node.kill()
                sub.run_until(lambda got: got.heartbeats[-1].stats["nats_reconnects"] >= 1 and all(
                    len([m for _, m in got.books[cut:] if m.name == b]) >= 20 for b in BOOKS),
                    "books after the relay moved to another node")
                hb = sub.got.heartbeats[-1]
                cut_seq = {book: max(m.relay_seq for _, m in sub.got.books[:cut] if m.name == book)
                           for book in BOOKS}
                # A direct get may be answered by a replica still catching up after the
                # election: the stream takes the new messages eventually, not at once.
                fetched = wait_until(lambda: newer_values(sub, name, cut_seq), WAIT_S,
                                     "the stream serving messages from after the failover",
                                     sleep=sub.run_for, poll_s=0.2)
            assert relay.proc.poll() is None, relay.log_text()
    finally:
        obs.close()
    assert hb.stats["nats_server"] != killed_url
    check = ExactnessCheck()
    for book in BOOKS:
        msgs = sub.got.of(book)
        assert len({m.incarnation for m in msgs}) == 1              # the same relay throughout
        assert all(a.relay_seq < b.relay_seq for a, b in zip(msgs, msgs[1:]))
        for msg in msgs:
            check.check(msg)
        ExactnessCheck().check(fetched[book])     # the stream's value, from after the failover


def relay_alive(relay):
    """True while the relay runs; its exit fails the test at once, with its log."""
    assert relay.proc.poll() is None, relay.log_text()
    return True


def newer_values(sub, name, cut_seq):
    """The stream's last values if every book's is newer than `cut_seq` names, else None."""
    fetched = sub.call(fetch_last_values(sub.nc, name))
    if all(book in fetched and fetched[book].relay_seq > seq for book, seq in cut_seq.items()):
        return fetched
    return None
