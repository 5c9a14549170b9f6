"""The `nats` feed: a remote observer mirrors a relay's books, exactly, across faults.

Real processes throughout: the source observer (synthetic feeds, module fixture), obrelay,
nats-server with JetStream, the mirror observer, and obclient on the mirror. Every book read on
the mirror is compared, level by level, with the source's book at the same update id (the
synthetic walk replayed, relaykit.SyntheticReplay).
"""

import os
import time

import pytest

from mirrorkit import MirrorReader, mirror_observer
from kit.procs import unique_name, wait_until
from relaykit import RelayProcess

pytestmark = pytest.mark.timeout(240)

BOOKS = ("synthetic:BTCUSD", "synthetic:ETHUSD")
HEARTBEAT_MS = "100"
PAUSE_S = 5.0
READS = 20


def start_relay(observer, urls, name, workdir):
    return RelayProcess(observer, urls, "--name", name, "--heartbeat-ms", HEARTBEAT_MS,
                        workdir=workdir).start()


def read_exact(reader: MirrorReader, what: str, after=None) -> dict:
    """Live books past `after`, then READS more reads, each checked exact."""
    snaps = reader.wait_all_live(what, after=after)
    reader.check_exact(snaps)
    for _ in range(READS):
        snaps = reader.wait_all_live(f"{what} (reading on)",
                                     after={b: s.update_id for b, s in snaps.items()})
        reader.check_exact(snaps)
    return {b: s.update_id for b, s in snaps.items()}


def started(mirror):
    mirror.start()
    mirror.wait_ready(books_live=False).close()
    return mirror


def test_mirror_is_exact_across_relay_restart_and_its_own_restart(nats_server, observer,
                                                                   workdir):
    name = unique_name("m")
    mirror = mirror_observer(nats_server.url, name, BOOKS, workdir=str(workdir / name),
                             name=unique_name("mirror"))
    relay = start_relay(observer, nats_server.url, name, str(workdir))
    reader = None
    try:
        started(mirror)
        reader = MirrorReader(mirror, BOOKS)
        seen = read_exact(reader, "the mirror's first live books")

        relay.kill()                                        # SIGKILL: no goodbye
        reader.wait_all_stale("books stale once the relay's heartbeats stop")
        relay = start_relay(observer, nats_server.url, name, str(workdir))
        seen = read_exact(reader, "books live again from the restarted relay", after=seen)

        reader.close()
        reader = None
        assert mirror.stop() == 0, mirror.log_text()
        mirror.close()
        mirror = started(mirror_observer(nats_server.url, name, BOOKS,
                                         workdir=str(workdir / name), name=unique_name("mirror")))
        reader = MirrorReader(mirror, BOOKS)             # late join: the stream's last values
        read_exact(reader, "a restarted mirror's books", after=None)
        assert "Traceback" not in mirror.log_text()
    finally:
        if reader is not None:
            reader.close()
        relay.kill()
        mirror.close()
    assert reader.checked >= 2 * READS


def test_mirror_goes_stale_while_nats_is_stopped_then_exact(nats_server, observer, workdir):
    name = unique_name("p")
    mirror = mirror_observer(nats_server.url, name, BOOKS, workdir=str(workdir / name),
                             name=unique_name("mirror"))
    relay = start_relay(observer, nats_server.url, name, str(workdir))
    reader = None
    try:
        started(mirror)
        reader = MirrorReader(mirror, BOOKS)
        seen = read_exact(reader, "the mirror's first live books")
        paused_s = time.monotonic()
        nats_server.pause()
        try:
            reader.wait_all_stale("books stale while NATS is stopped", timeout_s=PAUSE_S)
            # The fault lasts PAUSE_S; the books must stay stale all along.
            while time.monotonic() - paused_s < PAUSE_S:
                assert all(s.stale for s in reader.snapshots().values())
                time.sleep(0.05)
        finally:
            nats_server.resume()
        read_exact(reader, "books exact again after NATS resumed", after=seen)
        assert relay.proc.poll() is None, relay.log_text()
    finally:
        if reader is not None:
            reader.close()
        relay.kill()
        mirror.close()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two allowed cores")
def test_a_mirror_in_shard_processes_is_exact(nats_server, observer, workdir):
    """With --cores the nats feed runs in a shard process forked from the zygote: its NATS
    thread starts there, after the fork."""
    name = unique_name("s")
    cores = ",".join(map(str, sorted(os.sched_getaffinity(0))[:2]))
    mirror = mirror_observer(nats_server.url, name, BOOKS, workdir=str(workdir / name),
                             name=unique_name("mirror"), extra_args=["--cores", cores])
    relay = start_relay(observer, nats_server.url, name, str(workdir))
    reader = None
    try:
        started(mirror)
        reader = MirrorReader(mirror, BOOKS)
        read_exact(reader, "the books of a mirror in shard processes")
        reader.close()
        reader = None
        assert mirror.stop() == 0, mirror.log_text()
    finally:
        if reader is not None:
            reader.close()
        relay.kill()
        mirror.close()


def test_a_mirror_without_nats_serves_stale_books_and_stops_cleanly(workdir):
    from natskit import free_port

    name = unique_name("u")
    mirror = mirror_observer(f"nats://127.0.0.1:{free_port()}", name, BOOKS,
                             workdir=str(workdir / name), name=unique_name("mirror"))
    try:
        started(mirror)
        reader = MirrorReader(mirror, BOOKS)
        try:
            assert all(s.stale for s in reader.snapshots().values())
        finally:
            reader.close()
        wait_until(lambda: "retrying" in mirror.log_text(), 30, "the failure logged")
        assert mirror.stop() == 0, mirror.log_text()
        assert "Traceback" not in mirror.log_text()
    finally:
        mirror.close()


def test_a_mirror_naming_no_books_mirrors_every_book_of_the_relay(nats_server, observer,
                                                                   workdir):
    name = unique_name("d")
    mirror = mirror_observer(nats_server.url, name, None, workdir=str(workdir / name),
                             name=unique_name("mirror"))
    relay = start_relay(observer, nats_server.url, name, str(workdir))
    reader = None
    try:
        # The relay's stream lists its books once it has published them.
        wait_until(lambda: " observer_attached " in relay.log_text()
                   and "books_relayed=2 " in relay.log_text(), 60, "the relay")
        started(mirror)
        reader = MirrorReader(mirror, BOOKS)
        assert sorted(b.name for b in reader.client.books()) == sorted(BOOKS)
        read_exact(reader, "the discovered books")
    finally:
        if reader is not None:
            reader.close()
        relay.kill()
        mirror.close()


def test_a_mirror_naming_no_books_needs_nats_at_start_and_says_so(workdir, tmp_path):
    from natskit import free_port

    mirror = mirror_observer(f"nats://127.0.0.1:{free_port()}", "nobody", None,
                             workdir=str(tmp_path), name=unique_name("mirror"))
    try:
        mirror.start()
        assert mirror.proc.wait(60) == 2
        lines = [line for line in mirror.log_text().splitlines() if line.strip()]
        assert "cannot list the books of relay nobody" in lines[-1], lines
        assert "Connect call failed" in lines[-1], lines          # the refusal, not a timeout
        assert lines[-1].endswith("name them in symbols"), lines
        assert "Traceback" not in mirror.log_text()
    finally:
        mirror.close()


def test_a_bad_nats_feed_config_is_one_clear_line(workdir, tmp_path):
    from kit.procs import ObserverProcess

    path = tmp_path / "bad.toml"
    path.write_text('[[feed]]\nexchange = "nats"\nrelay = "x"\nsymbols = ["a:B"]\n')
    bad = ObserverProcess(None, workdir=str(tmp_path), extra_args=["--config", str(path)])
    try:
        bad.start()
        assert bad.proc.wait(30) == 2
        lines = [line for line in bad.log_text().splitlines() if line.strip()]
        assert lines[-1].endswith("url is required for nats feeds"), lines
        assert "Traceback" not in bad.log_text()
    finally:
        bad.close()
