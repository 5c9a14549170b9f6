"""examples/c-reader, a C11 reader written from docs/PROTOCOL.md, against real observers.

The reader is built with the system C compiler into the test's temp dir, run as a separate
process, and its output compared exactly with obctl's (`snapshot --json`) for the same `seq`,
and with obclient's ring follower record for record. A peer speaking the protocol by hand
(a real unix socket, a real memfd passed with SCM_RIGHTS) checks that it refuses a segment
whose layout is not the one it knows, naming what is wrong.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import obclient
from obclient.obctl import snapshot_json
from observer.process.supervisor import RING_RECORDS
from kit.procs import ObserverProcess, unique_name
from obproto import framing, latch, layout
from obproto import messages as m
from venuekit import venue_observer

SOURCE_DIR = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "c-reader")
WAIT_S = 60.0               # a bound, never a timing assertion (the machine may be very busy)
PATIENT_S = "600"           # heartbeat threshold for runs that must not see a starved observer
SAME_SEQ_TRIES_MAX = 20
STRICT_CFLAGS = "-std=c11 -O2 -Wall -Wextra -Wpedantic -Werror"
EXIT_REFUSED, EXIT_GONE, EXIT_INCOMPATIBLE = 3, 4, 5


@pytest.fixture(scope="module")
def obreader(tmp_path_factory):
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        pytest.skip(f"no C compiler ({cc}) on this machine to build examples/c-reader")
    out = tmp_path_factory.mktemp("c-reader")
    cflags = os.environ.get("CFLAGS", STRICT_CFLAGS)   # e.g. add -fsanitize=address,undefined
    build = subprocess.run(["make", "-s", "-C", SOURCE_DIR, f"OUT={out}", f"CC={cc}",
                            f"CFLAGS={cflags}"],
                           capture_output=True, text=True, timeout=WAIT_S)
    assert build.returncode == 0, build.stderr + build.stdout
    return str(out / "obreader")


def run(obreader, *args, timeout_s=WAIT_S):
    return subprocess.run([obreader, *args], capture_output=True, text=True, timeout=timeout_s)


def obctl_json(socket_path, name, depth):
    env = {k: v for k, v in os.environ.items() if k != "OBSERVER_SOCKET"}
    done = subprocess.run([sys.executable, "-m", "obclient.obctl", "--socket", socket_path,
                           "snapshot", name, "--json", "--depth", str(depth)],
                          capture_output=True, text=True, env=env, timeout=WAIT_S)
    assert done.returncode == 0, done.stderr
    return done.stdout


def python_line(book, depth):
    """What `obctl snapshot NAME --json --depth N` prints, from an in-process snapshot."""
    snap = book.snapshot(depth)
    return snap.seq, json.dumps(snapshot_json(book.name, snap), separators=(",", ":")) + "\n"


# -- the layout the reader was compiled with ------------------------------------------------

def test_the_reader_was_compiled_with_the_layout_of_the_spec(obreader):
    done = run(obreader, "layout")
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    g1, g10 = (layout.plan_geometry(1, 1, d, 16) for d in (1, 10))
    assert got == {
        "magic": layout.MAGIC, "layout_version": layout.LAYOUT_VERSION,
        "layout_hash": layout.LAYOUT_HASH, "header_bytes": layout.HEADER.itemsize,
        "book_desc_bytes": layout.BOOK_DESC.itemsize,
        "book_stats_bytes": layout.BOOK_STATS.itemsize, "shard_bytes": layout.SHARD.itemsize,
        "copy_head_bytes": layout.COPY_HEAD.itemsize,
        "ring_record_bytes": layout.RING_RECORD.itemsize, "align_bytes": layout.ALIGN_BYTES,
        "slot_copies_offset": layout.slot_dtype(1).fields["copies"][1],
        "protocol_version": m.PROTOCOL_VERSION,
        "latch_retries_max": latch.LATCH_RETRIES_MAX,
        "stale_after_s": obclient.client.STALE_AFTER_S,
        "heartbeats_missed_max": obclient.client.HEARTBEATS_MISSED_MAX,
        "copy_bytes_d1": layout.copy_dtype(1).itemsize, "slot_bytes_d1": g1.slot_bytes,
        "slot_bytes_d10": g10.slot_bytes, "ring_bytes_r16": g1.ring_bytes,
    }


# -- snapshots: the same bytes as obctl for the same seq ------------------------------------

@pytest.fixture(scope="module")
def quiet_observer():
    """Books published once and then left alone (one update per 1000 s): every read of a book
    is of the same seq, so obctl run as a separate process must print what the reader prints."""
    with ObserverProcess(rate=0.001, name=unique_name("crq")) as obs:
        obs.wait_ready().close()
        yield obs


@pytest.mark.parametrize("name,depth", [("BTCUSD", 1), ("synthetic:ETHUSD", 5),
                                        ("ethusd", 10), ("BTCUSD", 4096)])
def test_snapshot_prints_what_obctl_prints(obreader, quiet_observer, name, depth):
    path = quiet_observer.socket_path
    done = run(obreader, "--socket", path, "snapshot", name, "--depth", str(depth))
    assert done.returncode == 0, done.stderr
    assert done.stdout == obctl_json(path, name, depth)
    assert json.loads(done.stdout)["seq"] > 0


@pytest.fixture(scope="module")
def live_observer():
    with ObserverProcess(rate=40, name=unique_name("crl")) as obs:
        obs.wait_ready().close()
        yield obs


def test_snapshots_of_a_live_book_equal_obclient_for_the_same_seq(obreader, live_observer):
    """The reader prints a line per new seq while this process reads the same book; every seq
    both saw must give the same line, and at least a few must be common (bounded retries)."""
    path = live_observer.socket_path
    matched = 0
    with obclient.connect(path, stale_after_s=float(PATIENT_S)) as client:
        book = client.book("ETHUSD")
        for _ in range(SAME_SEQ_TRIES_MAX):
            seen: dict[int, str] = {}
            proc = subprocess.Popen([obreader, "--socket", path, "--stale-after", PATIENT_S,
                                     "snapshot", "ETHUSD", "--depth", "8", "--count", "5"],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                deadline_s = time.monotonic() + WAIT_S
                while proc.poll() is None and time.monotonic() < deadline_s:
                    seq, line = python_line(book, 8)
                    seen[seq] = line
                out, err = proc.communicate(timeout=WAIT_S)
            finally:
                proc.kill()
                proc.wait()
            assert proc.returncode == 0, err
            lines = out.splitlines(keepends=True)
            assert len(lines) == 5
            seqs = [json.loads(line)["seq"] for line in lines]
            assert seqs == sorted(set(seqs)), "one line per new seq, in order"
            for line, seq in zip(lines, seqs):
                if seq in seen:
                    assert line == seen[seq]
                    matched += 1
            if matched >= 3:
                return
    pytest.fail(f"only {matched} seqs read by both in {SAME_SEQ_TRIES_MAX} runs")


# -- following the ring -------------------------------------------------------------------------

def test_follow_prints_the_records_the_python_follower_takes(obreader, live_observer):
    path = live_observer.socket_path
    count = 40
    records: list = []
    stop = threading.Event()
    with obclient.connect(path, stale_after_s=float(PATIENT_S)) as client:
        stream = client.stream(["BTCUSD"])
        records.extend(stream.poll())           # follows from here: before the C reader starts

        def collect():
            while not stop.is_set():
                records.extend(stream.poll())
                stream.wait(0.05)

        thread = threading.Thread(target=collect, daemon=True)
        thread.start()
        try:
            done = run(obreader, "--socket", path, "--stale-after", PATIENT_S, "follow",
                       "BTCUSD", "--count", str(count))
            assert done.returncode == 0, done.stderr
            got = [json.loads(line) for line in done.stdout.splitlines()]
            assert len(got) == count
            last = got[-1]["book_seq"]
            deadline_s = time.monotonic() + WAIT_S
            while not any(r.book_seq >= last for r in list(records)):
                assert time.monotonic() < deadline_s, "the Python follower fell behind"
                time.sleep(0.01)
        finally:
            stop.set()
            thread.join(WAIT_S)
    assert all(r.kind == layout.KIND_UPDATE for r in records), "no lap, no stale, no resync"
    assert all(r["kind"] == layout.KIND_UPDATE for r in got)
    expected = [{"book": "synthetic:BTCUSD", **{k: v for k, v in r._asdict().items()
                                                 if k != "book_index"}} for r in records]
    first = next(i for i, r in enumerate(expected) if r["book_seq"] == got[0]["book_seq"])
    assert got == expected[first:first + count]


def test_follow_from_a_snapshot_misses_and_repeats_nothing(obreader, live_observer):
    """The spec's start order (the ring head, then the book, then the records newer than the
    copy): every publish of a book makes the next seq and one ring record, so the records that
    follow a snapshot of seq S are S + 1, S + 2, ... without a hole."""
    count = 30
    done = run(obreader, "--socket", live_observer.socket_path, "--stale-after", PATIENT_S,
               "follow", "ETHUSD", "--with-snapshot", "--depth", "3", "--count", str(count))
    assert done.returncode == 0, done.stderr
    first, *lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert first["book"] == "synthetic:ETHUSD" and len(first["bids"]) == 3
    assert [r["book_seq"] for r in lines] == list(range(first["seq"] + 1,
                                                        first["seq"] + 1 + count))
    assert all(r["kind"] == layout.KIND_UPDATE for r in lines)


LAP_SYMBOLS = "BTCUSD,ETHUSD,SOLUSD,XRPUSD,ADAUSD,DOTUSD,LTCUSD,BCHUSD"


def test_a_lapped_reader_resyncs_from_the_slot_and_goes_on_without_a_hole(obreader):
    """Stopped while the shard writes more than a ring, the reader finds its next record
    overwritten: it jumps to the head, prints the book's slot as a KIND_RESYNC record of seq
    S, then the records S + 1, S + 2, ... (none older, none missing)."""
    # Eight books fill the shard's ring about 3.5 times as fast as two at this rate (measured
    # 6000 records/s against 1700): the ring, not the rate, is what the test waits on.
    with ObserverProcess(f"synthetic:{LAP_SYMBOLS}", rate=4000, name=unique_name("crlap")) as obs:
        obs.wait_ready().close()
        lines: list[str] = []
        proc = subprocess.Popen([obreader, "--socket", obs.socket_path, "--stale-after",
                                 PATIENT_S, "follow", "BTCUSD"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
        reader.start()
        try:
            with obclient.connect(obs.socket_path, stale_after_s=float(PATIENT_S)) as client:
                def head():
                    return client.stats().observer["shard_list"][0]["records"]

                _wait_for(lambda: lines, "the reader's first record")
                proc.send_signal(signal.SIGSTOP)
                # Its next record is at most the head now: a ring more overwrites it (and a
                # quarter more leaves no doubt), whatever the reader had read before the stop.
                lapped_at = head() + RING_RECORDS + RING_RECORDS // 4
                _wait_for(lambda: head() > lapped_at, "the shard to write over a ring")
                proc.send_signal(signal.SIGCONT)
                _wait_for(lambda: _after_resync(lines, 20), "20 records after a resync")
        finally:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
            proc.wait()
            reader.join(WAIT_S)
    got = _after_resync(lines, 20)
    assert got[0]["kind"] == layout.KIND_RESYNC
    assert [r["book_seq"] for r in got] == list(range(got[0]["book_seq"],
                                                      got[0]["book_seq"] + len(got)))
    assert all(r["kind"] == layout.KIND_UPDATE for r in got[1:])


def _after_resync(lines, count):
    """The resync record and up to `count` records after it, or [] before the resync."""
    records = [json.loads(line) for line in list(lines)]
    kinds = [r["kind"] for r in records]
    if layout.KIND_RESYNC not in kinds:
        return []
    start = kinds.index(layout.KIND_RESYNC)
    after = records[start:start + 1 + count]
    return after if len(after) == 1 + count else []


def _wait_for(predicate, what):
    deadline_s = time.monotonic() + 2 * WAIT_S
    while not predicate():
        assert time.monotonic() < deadline_s, f"not within {2 * WAIT_S} s: {what}"
        time.sleep(0.02)


# -- seeing the observer go -------------------------------------------------------------------

def _follow_until_gone(obreader, obs, stale_after, act):
    proc = subprocess.Popen([obreader, "--socket", obs.socket_path, "--stale-after", stale_after,
                             "follow", "BTCUSD"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()              # attached and following
        assert json.loads(first)["book"] == "synthetic:BTCUSD", proc.stderr.read()
        act(obs)
        _, err = proc.communicate(timeout=WAIT_S)
    finally:
        proc.kill()
        proc.wait()
    return proc.returncode, err


@pytest.mark.parametrize("how,stale_after,reason", [
    ("SIGKILL", PATIENT_S, "observer gone: control socket closed by the observer"),
    ("SIGTERM", PATIENT_S, "control socket closed by the observer: SHUTTING_DOWN"),
    ("SIGSTOP", "1", "observer gone: heartbeat older than 1 s"),
])
def test_follow_sees_the_observer_go(obreader, how, stale_after, reason):
    with ObserverProcess(rate=40, name=unique_name("crd")) as obs:
        obs.wait_ready().close()
        try:
            code, err = _follow_until_gone(obreader, obs, stale_after,
                                           lambda o: o.send_signal(getattr(signal, how)))
        finally:
            if how == "SIGSTOP":
                obs.send_signal(signal.SIGCONT)
        assert code == EXIT_GONE, err
        assert reason in err
        assert len(err.splitlines()) == 1, err


# -- refusing what it does not know: a peer with a crafted segment -------------------------------

def _segment_bytes_for(geometry, mutate) -> bytes:
    head = bytearray(geometry.segment_bytes)
    record = layout.HEADER
    values = {**geometry._asdict(), "magic": layout.MAGIC,
              "layout_version": layout.LAYOUT_VERSION, "header_bytes": record.itemsize,
              "layout_hash": layout.LAYOUT_HASH, "generation": 7, "state": layout.STATE_LIVE,
              "heartbeat_ns": time.time_ns(), "heartbeat_period_ns": 100_000_000}
    values = mutate(values)
    for name, value in values.items():
        if name in record.names:
            dtype, offset = record.fields[name][:2]
            head[offset:offset + dtype.itemsize] = value.to_bytes(dtype.itemsize, "little")
    desc = layout.BOOK_DESC
    for field, value in (("exchange", b"test"), ("symbol", b"BTCUSD")):
        offset = geometry.descs_offset + desc.fields[field][1]
        head[offset:offset + len(value)] = value
    return bytes(head)


class CraftedPeer:
    """A control socket that answers hello with a welcome and a memfd of our making."""

    def __init__(self, path, segment: bytes | None, *, refuse: tuple | None = None):
        self.path = path
        self.segment = segment
        self.refuse = refuse
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        self.listener.listen(1)
        self.listener.settimeout(WAIT_S)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.error = None
        self.thread.start()

    def serve(self):
        try:
            conn, _ = self.listener.accept()
            with conn:
                codec = m.server_codec()
                if self.refuse:
                    conn.sendall(framing.encode_frame(codec.encode(m.Error(0, *self.refuse)),
                                                      m.REPLY_BYTES_MAX))
                    return
                conn.settimeout(WAIT_S)
                hello = codec.decode(conn.recv(4096)[4:])
                assert type(hello) is m.Hello and hello.version_max == 2, hello
                self._welcome(conn, codec, hello.req_id)
                select.select([conn], [], [], WAIT_S)       # until the reader goes
        except BaseException as exc:
            self.error = exc

    def _welcome(self, conn, codec, req_id):
        fd = os.memfd_create("crafted", os.MFD_CLOEXEC)
        wake = select.epoll()
        try:
            os.write(fd, self.segment)
            welcome = m.Welcome(req_id, 2, "crafted", os.getpid(), 7, len(self.segment),
                                layout.LAYOUT_VERSION, layout.LAYOUT_HASH, 1, True, 0.1, 60.0)
            frame = framing.encode_frame(codec.encode(welcome), m.REPLY_BYTES_MAX)
            socket.send_fds(conn, [frame], [fd, wake.fileno()])
        finally:
            os.close(fd)
            wake.close()

    def close(self):
        self.thread.join(WAIT_S)
        self.listener.close()
        assert self.error is None, self.error


def _set(**changes):
    return lambda values: {**values, **changes}


GEOMETRY = layout.plan_geometry(1, 1, 4, 16)


@pytest.mark.parametrize("mutate,message", [
    (_set(magic=1), "bad magic"),
    (_set(layout_version=3), "segment layout version 3, this reader knows 4"),
    (_set(layout_hash=0x1234), "segment layout hash 0x0000000000001234"),
    (_set(ring_bytes=GEOMETRY.ring_bytes + 64), "segment header ring_bytes"),
    (_set(slot_bytes=GEOMETRY.slot_bytes - 64), "segment header slot_bytes"),
    (_set(segment_bytes=GEOMETRY.segment_bytes + 64), "segment header segment_bytes"),
    (_set(ring_records=24), "segment geometry out of limits"),
])
def test_the_reader_refuses_a_layout_it_does_not_know(obreader, tmp_path, mutate, message):
    path = str(tmp_path / "crafted.sock")
    peer = CraftedPeer(path, _segment_bytes_for(GEOMETRY, mutate))
    done = run(obreader, "--socket", path, "snapshot", "BTCUSD")
    peer.close()
    assert done.returncode == EXIT_INCOMPATIBLE, done.stderr
    assert message in done.stderr
    assert len(done.stderr.splitlines()) == 1 and done.stdout == ""


def test_the_crafted_segment_itself_is_accepted(obreader, tmp_path):
    """The refusals above are for the one field changed: unchanged, the segment is read (its
    book never published: empty and stale)."""
    path = str(tmp_path / "crafted.sock")
    peer = CraftedPeer(path, _segment_bytes_for(GEOMETRY, lambda values: values))
    done = run(obreader, "--socket", path, "snapshot", "test:btcusd")
    peer.close()
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"book": "test:BTCUSD", "bids": [], "asks": [],
                                       "update_id": 0, "seq": 0, "exch_ts_ns": 0,
                                       "publish_ts_ns": 0, "stale": True, "lagging": False}


def test_a_truncated_segment_is_refused(obreader, tmp_path):
    path = str(tmp_path / "crafted.sock")
    whole = _segment_bytes_for(GEOMETRY, lambda values: values)
    peer = CraftedPeer(path, whole[:GEOMETRY.segment_bytes - 64])
    done = run(obreader, "--socket", path, "snapshot", "BTCUSD")
    peer.close()
    assert done.returncode == EXIT_INCOMPATIBLE
    assert f"segment declares {GEOMETRY.segment_bytes} bytes" in done.stderr


def test_a_refusal_is_one_line_with_the_observers_reason(obreader, tmp_path):
    path = str(tmp_path / "busy.sock")
    peer = CraftedPeer(path, None, refuse=(m.ErrorCode.BUSY, "clients_max=256 reached"))
    done = run(obreader, "--socket", path, "snapshot", "BTCUSD")
    peer.close()
    assert done.returncode == EXIT_REFUSED
    assert done.stderr == "obreader: refused by the observer: BUSY: clients_max=256 reached\n"


def test_no_observer_is_one_line(obreader, tmp_path):
    done = run(obreader, "--socket", str(tmp_path / "nobody.sock"), "snapshot", "BTCUSD")
    assert done.returncode == 1
    assert done.stderr.startswith("obreader: no observer at ") and done.stderr.count("\n") == 1


@pytest.mark.parametrize("env", [
    {"OBSERVER_SOCKET": "{tmp}/explicit.sock", "XDG_RUNTIME_DIR": "{tmp}/xdg"},
    {"XDG_RUNTIME_DIR": "{tmp}/xdg", "TMPDIR": "{tmp}/tmpdir"},
    {"XDG_RUNTIME_DIR": "{tmp}/missing", "TMPDIR": "{tmp}/tmpdir"},
    {"TMPDIR": "{tmp}/tmpdir"},
])
def test_the_default_socket_path_is_the_same_in_c_and_python(obreader, tmp_path, env):
    """Without --socket both find the observer by the spec's rule: where Python's default path
    says, a peer answers (BUSY, at once), and the C reader reaches it."""
    for sub in ("xdg", "tmpdir"):
        (tmp_path / sub).mkdir()
    base = {k: v for k, v in os.environ.items()
            if k not in ("OBSERVER_SOCKET", "XDG_RUNTIME_DIR", "TMPDIR", "TEMP", "TMP")}
    env = {**base, **{k: v.format(tmp=tmp_path) for k, v in env.items()}}
    where = subprocess.run([sys.executable, "-c", "from obproto.messages import "
                            "default_socket_path as d; print(d())"],
                           capture_output=True, text=True, env=env, timeout=WAIT_S)
    path = where.stdout.strip()
    assert path.startswith(str(tmp_path)), where.stderr
    peer = CraftedPeer(path, None, refuse=(m.ErrorCode.BUSY, "here"))
    done = subprocess.run([obreader, "snapshot", "BTCUSD"], capture_output=True, text=True,
                          env=env, timeout=WAIT_S)
    peer.close()
    assert done.stderr == "obreader: refused by the observer: BUSY: here\n"



# -- book names: the reader resolves them as obclient does -----------------------------------

# Against obsim's Kraken (BTC/USD, ETH/USD) and Coinbase (BTC-USD): native spellings, any case,
# Kraken's legacy codes, bare symbols one venue has, and every way a name fails.
NAMES = ["kraken:BTCUSD", "kraken:BTC/USD", "KRAKEN:btc/usd", "kraken:XBT/USD", "kraken:xbtusd",
         "coinbase:btc-usd", "Coinbase:BTC-USD", "coinbase:BTC_USD", "coinbase:btcusd",
         "ETHUSD", "eth/usd", "ETH-USD", "xethusd", "  ETHUSD ", ":ETHUSD", "kraken:eth.usd",
         "BTCUSD", "btcusd", "BTC/USD", "XBT/USD", "btc-usd",
         "DOGEUSD", "kraken:DOGEUSD", "coinbase:ETHUSD", "bitstamp:BTCUSD", "Bitstamp:btcusd",
         "a:b:ETHUSD", "BTC USD", "it's", "", "   ", "kraken:", "X" * 60, "kraken:ETH\\USD"]


@pytest.fixture(scope="module")
def venues():
    with venue_observer() as obs:
        yield obs


def test_names_resolve_as_obclient_resolves_them(obreader, venues):
    """Each name: the same book, or the same one-line error (exit 2), as obclient says it."""
    with obclient.connect(venues.socket_path) as client:
        expected = {}
        for name in NAMES:
            try:
                expected[name] = (0, client.book(name).name)
            except obclient.BookNotFound as exc:
                expected[name] = (2, f"obreader: {exc}\n")
    kinds = {code for code, _ in expected.values()}
    assert kinds == {0, 2}, expected                  # the table exercises both outcomes
    assert expected["BTCUSD"][1].endswith(" is ambiguous: coinbase:BTCUSD, kraken:BTCUSD\n")
    got = {}
    for name in NAMES:
        done = run(obreader, "--socket", venues.socket_path, "snapshot", name, "--depth", "1")
        got[name] = ((0, json.loads(done.stdout)["book"]) if done.returncode == 0
                     else (done.returncode, done.stderr))
    assert got == expected
