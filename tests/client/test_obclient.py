"""obclient against a real observer process: books, updates, wake-ups, and surviving kill -9."""

import os
import select
import time

import numpy as np
import pytest

import obclient
from kit.procs import ObserverProcess, unique_name, wait_until
from obproto import layout

WAIT_S = 30.0
# Tests that check an unbroken run of updates must not see a reattach because this busy machine
# starved the observer for a second; liveness has its own tests with their own thresholds.
PATIENT_S = 30.0


@pytest.fixture(scope="module")
def observer():
    with ObserverProcess(rate=300) as obs:
        obs.wait_ready().close()
        yield obs


def test_missing_observer_is_a_clear_error(tmp_path):
    path = str(tmp_path / "nobody.sock")
    with pytest.raises(obclient.ObserverUnavailable, match="no observer at .*nobody.sock"):
        obclient.connect(path)


def test_an_observer_that_dies_during_the_handshake_is_observer_unavailable(tmp_path):
    """A peer that closes with our hello unread makes the kernel reset the connection: connect()
    reports ObserverUnavailable like any other absent observer, never a bare socket error."""
    import socket
    import threading

    path = str(tmp_path / "dying.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    listener.settimeout(WAIT_S)

    def die_with_the_hello_unread():
        conn, _ = listener.accept()
        conn.settimeout(WAIT_S)
        conn.recv(1, socket.MSG_PEEK)           # the hello is here, and stays unread
        conn.close()

    thread = threading.Thread(target=die_with_the_hello_unread, daemon=True)
    thread.start()
    try:
        with pytest.raises(obclient.ObserverUnavailable, match="went away during the handshake"):
            obclient.connect(path, timeout_s=WAIT_S)
    finally:
        thread.join(WAIT_S)
        listener.close()
    assert not thread.is_alive()


def test_default_socket_path_follows_the_environment(monkeypatch, tmp_path):
    from obproto.messages import default_socket_path

    monkeypatch.setenv("OBSERVER_SOCKET", str(tmp_path / "x.sock"))
    assert default_socket_path() == str(tmp_path / "x.sock")
    monkeypatch.delenv("OBSERVER_SOCKET")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert default_socket_path() == str(tmp_path / "observer.sock")


def test_books_and_a_consistent_snapshot(observer):
    with obclient.connect(observer.socket_path) as client:
        names = sorted(b.name for b in client.books())
        assert names == ["synthetic:BTCUSD", "synthetic:ETHUSD"]
        book = client.book("btcusd")
        assert book.name == "synthetic:BTCUSD"
        snap = book.snapshot(depth=5)
        snap.check()
        assert not snap.stale
        assert snap.n_bids == 5 and snap.n_asks == 5
        assert snap.bid_px[0] < snap.ask_px[0]
        assert snap.price_exp == -2
        assert np.array_equal(snap.bids[:, 0], snap.bid_px / 100.0)
        assert str(snap.bids_decimal()[0][0]) == f"{snap.bid_px[0] // 100}.{snap.bid_px[0] % 100:02d}"
        assert snap.update_id > 0
        full = client.book("synthetic:ETHUSD").snapshot()
        assert full.n_bids > 5


def test_unknown_book_is_book_not_found(observer):
    with obclient.connect(observer.socket_path) as client:
        with pytest.raises(obclient.BookNotFound, match="unknown book 'DOGEUSD'"):
            client.book("DOGEUSD")
        with pytest.raises(obclient.BookNotFound):
            client.book("kraken:BTCUSD")


@pytest.mark.parametrize("busy_poll", [False, True])
def test_updates_yield_only_the_named_books_in_order(observer, busy_poll):
    with obclient.connect(observer.socket_path, busy_poll=busy_poll,
                          stale_after_s=PATIENT_S) as client:
        index = {b.name: b.book_index for b in client.books()}["synthetic:ETHUSD"]
        got = []
        for update in client.updates(["ETHUSD"], timeout_s=WAIT_S):
            got.append(update)
            if len(got) == 30:
                break
        assert len(got) == 30
        assert {u.book_index for u in got} == {index}
        assert all(b.book_seq < a.book_seq for b, a in zip(got, got[1:]))
        assert all(u.bid_px < u.ask_px for u in got)
        assert all(u.kind == layout.KIND_UPDATE for u in got)


def test_updates_return_after_timeout_without_records(observer, tmp_path):
    with ObserverProcess(rate=0.001, workdir=str(tmp_path)) as quiet:
        quiet.wait_ready().close()
        with obclient.connect(quiet.socket_path) as client:
            assert list(client.updates(None, timeout_s=0.3)) == []


def test_fileno_becomes_readable_on_publish(observer):
    with obclient.connect(observer.socket_path) as client:
        poller = select.poll()
        poller.register(client.fileno(), select.POLLIN)
        assert wait_until(lambda: poller.poll(100), WAIT_S, "the client fd to become readable")
        assert next(iter(client.updates(None, timeout_s=WAIT_S))) is not None


def test_client_survives_kill_9_and_reattaches_to_a_new_observer(tmp_path):
    name = unique_name("r")
    with ObserverProcess(name=name, workdir=str(tmp_path), rate=200) as obs:
        obs.wait_ready().close()
        # kill -9 is seen by the socket's hang-up; a starved heartbeat must not add a detach
        client = obclient.connect(obs.socket_path, stale_after_s=PATIENT_S)
        generation = client.generation
        btc = client.book("BTCUSD")
        assert not btc.snapshot().stale
        stream = client.updates(["BTCUSD"], timeout_s=WAIT_S)
        assert next(stream).kind == layout.KIND_UPDATE
        obs.kill()
        killed_s = time.monotonic()
        first = next(u for u in stream if u.kind != layout.KIND_UPDATE)
        noticed_s = time.monotonic() - killed_s
        assert first.kind == layout.KIND_STALE
        assert first.stale
        assert not client.attached
        assert btc.snapshot().stale                        # the last copy, marked stale
        print(f"client noticed kill -9 after {noticed_s * 1e3:.1f} ms")
        obs.start()                                         # a new observer, same socket
        resync = next(stream)
        assert resync.kind == layout.KIND_RESYNC
        assert client.attached
        assert client.generation != generation
        assert next(stream).kind == layout.KIND_UPDATE
        assert not btc.snapshot().stale
        client.close()


def test_client_notices_a_clean_stop_and_reports_stale(tmp_path):
    with ObserverProcess(workdir=str(tmp_path)) as obs:
        obs.wait_ready().close()
        client = obclient.connect(obs.socket_path, stale_after_s=PATIENT_S)   # seen by hang-up
        book = client.book("ETHUSD")
        assert not book.snapshot().stale
        assert obs.stop() == 0
        wait_until(lambda: book.snapshot().stale, WAIT_S, "the book to be reported stale")
        with pytest.raises(obclient.ObserverUnavailable):
            client.books()
        client.close()


def test_client_kill_9_leaves_the_observer_serving(observer):
    import subprocess
    import sys

    code = ("import obclient,sys; c=obclient.connect(sys.argv[1]); c.subscribe([]);"
            "print('up', flush=True); [None for _ in c.updates(None)]")
    proc = subprocess.Popen([sys.executable, "-c", code, observer.socket_path],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "up"
        proc.kill()
        proc.wait(WAIT_S)
    finally:
        proc.stdout.close()
    with obclient.connect(observer.socket_path) as client:
        wait_until(lambda: all(c["name"] != "obclient" or c["subscribed"] == 0
                               for c in client.stats().clients), WAIT_S,
                   "the killed client's connection to be dropped")
        assert not client.snapshot("BTCUSD").stale


def test_stale_heartbeat_is_noticed_and_the_client_reattaches(tmp_path):
    """SIGSTOP freezes the observer without closing its socket: only the heartbeat tells."""
    import signal

    with ObserverProcess(workdir=str(tmp_path)) as obs:
        obs.wait_ready().close()
        client = obclient.connect(obs.socket_path, stale_after_s=0.5)
        book = client.book("BTCUSD")
        generation = client.generation
        # A busy machine can starve the observer past 0.5 s on its own: wait for a fresh
        # heartbeat rather than assume one.
        wait_until(lambda: not book.snapshot().stale, WAIT_S, "the observer to be live")
        obs.send_signal(signal.SIGSTOP)
        try:
            wait_until(lambda: book.snapshot().stale, WAIT_S, "the frozen observer to be noticed")
            assert "heartbeat" in client.detach_reason
        finally:
            obs.send_signal(signal.SIGCONT)
        wait_until(lambda: not book.snapshot().stale, WAIT_S, "the client to reattach")
        assert client.generation == generation            # same observer, same segment
        client.close()


def test_obclient_and_obctl_import_neither_the_server_nor_greenlet():
    import subprocess
    import sys

    code = ("import sys, obclient, obclient.obctl; "
            "bad = sorted({m.split('.')[0] for m in sys.modules} & "
            "{'observer', 'greenlet', 'orjson'}); print(bad)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=WAIT_S)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_segment_of_another_layout_is_refused_clearly(observer, monkeypatch):
    """The client's idea of the layout hash changes (as after an upgrade of one side only)."""
    monkeypatch.setattr(layout, "LAYOUT_HASH", layout.LAYOUT_HASH ^ 1)
    with pytest.raises(obclient.IncompatibleObserver, match="incompatible with this client"):
        obclient.connect(observer.socket_path)


def test_a_long_non_ascii_client_name_is_cut_to_the_byte_limit_not_refused(observer):
    """Names are limited in UTF-8 bytes (64); a name of 40 two-byte letters used to be cut at
    64 characters, 80 bytes, and the hello refused."""
    client = obclient.connect(observer.socket_path, client_name="é" * 40)
    names = [c["name"] for c in client.stats().clients]
    assert "é" * 32 in names
    client.close()
