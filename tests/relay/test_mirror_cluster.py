"""The `nats` feed on a 3-node NATS cluster: the node that both the relay and the mirror are
connected to is killed; both move to another node (nats-py learns the others from the cluster),
and the mirror's books stay exact, stale at most while it resyncs from the replicated stream."""

import re
import shutil

import pytest

from mirrorkit import MirrorReader, mirror_observer
from natskit import NatsCluster, tempdir
from kit.procs import unique_name, wait_until
from relaykit import RelayProcess
from test_mirror import BOOKS, HEARTBEAT_MS, read_exact, started

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def cluster(workdir):
    root = tempdir("obmirror-")
    nodes = NatsCluster(root)
    try:
        yield nodes.start()
    finally:
        nodes.close()
        shutil.rmtree(root, ignore_errors=True)


def connected_port(log_text: str) -> int:
    ports = re.findall(r"nats_connected relay=\S+ server=nats://127\.0\.0\.1:(\d+)", log_text)
    return int(ports[-1]) if ports else 0


def test_killing_the_shared_node_moves_relay_and_mirror_and_books_stay_exact(cluster, observer,
                                                                              workdir):
    name = unique_name("c")
    mirror = mirror_observer(cluster.urls, name, BOOKS, workdir=str(workdir / name),
                             name=unique_name("mirror"))
    relay = reader = None
    try:
        started(mirror)
        port = wait_until(lambda: connected_port(mirror.log_text()), 60, "the mirror's node")
        node = next(n for n in cluster.nodes if n.port == port)
        # The relay is given only the mirror's node; it learns the others from the cluster.
        relay = RelayProcess(observer, node.url, "--name", name, "--heartbeat-ms", HEARTBEAT_MS,
                             "--stream-replicas", "3", workdir=str(workdir)).start()
        reader = MirrorReader(mirror, BOOKS)
        seen = read_exact(reader, "the mirror's first live books")
        node.kill()
        wait_until(lambda: connected_port(mirror.log_text()) not in (0, port), 60,
                   "the mirror on another node")
        read_exact(reader, "books exact after the node died", after=seen)
        assert " nats_reconnected " in relay.log_text(), relay.log_text()
        assert relay.proc.poll() is None, relay.log_text()
        assert "Traceback" not in mirror.log_text()
    finally:
        if reader is not None:
            reader.close()
        if relay is not None:
            relay.kill()
        mirror.close()
