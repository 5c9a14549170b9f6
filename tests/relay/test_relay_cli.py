"""The obrelay command: bad settings are one line and exit 2 before anything connects; an
unreachable NATS is retried until SIGTERM (exit 0); a server without JetStream is exit 2."""

import signal
import socket
import subprocess
import sys
import time

import pytest

from natskit import NatsServer, free_port
from kit.procs import unique_name, wait_until
from relaykit import RelayProcess

EXIT_CONFIG = 2
WAIT_S = 60.0


def _obrelay(*args, timeout_s=WAIT_S):
    return subprocess.run([sys.executable, "-m", "obrelay", *args], capture_output=True,
                          text=True, timeout=timeout_s, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("args, says", [
    (["--depth", "0"], "--depth"),
    (["--tls-cert", "cert.pem"], "--tls-cert and --tls-key"),
    (["--creds", "missing.creds"], "--creds missing.creds"),
    (["--nats-url", "http://127.0.0.1:4222"], "scheme"),
    (["--subject-prefix", "a.b"], "prefix"),
    (["--inflight-bytes-max", "10"], "--inflight-bytes-max"),
    (["--tls-ca", __file__], "TLS files"),
    (["--stream-replicas", "9"], "--stream-replicas"),
])
def test_a_bad_setting_is_one_line_and_exit_2(tmp_path, args, says):
    done = _obrelay("--socket", str(tmp_path / "none.sock"), *args)
    assert done.returncode == EXIT_CONFIG
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("obrelay: ")
    assert says in lines[0]


def test_an_unreachable_nats_is_retried_until_sigterm(tmp_path):
    port = free_port()                          # nothing listens there
    log = tmp_path / "relay.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "obrelay", "--name", "nobody",
                                 "--socket", str(tmp_path / "none.sock"),
                                 "--nats-url", f"nats://127.0.0.1:{port}"],
                                stdout=out, stderr=out, stdin=subprocess.DEVNULL)
    try:
        wait_until(lambda: "retrying" in log.read_text(), WAIT_S, "the retry warning")
        # Still trying (not a quiet wait): its next attempt reaches a listener opened now,
        # which never answers; SIGTERM in the middle of that attempt still ends it cleanly.
        with socket.create_server(("127.0.0.1", port)) as listener:
            listener.settimeout(WAIT_S)
            attempt, _ = listener.accept()
            with attempt:
                assert proc.poll() is None, log.read_text()
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(WAIT_S) == 0, log.read_text()
    finally:
        proc.kill()
        proc.wait(WAIT_S)
    assert log.read_text().count("retrying") == 1        # said once, not per attempt


def test_a_server_without_jetstream_is_exit_2_unless_no_stream(workdir, observer):
    server = NatsServer(workdir, unique_name("nojs"), jetstream=False).start()
    try:
        server.wait_ready()
        relay = RelayProcess(observer, server.url, "--name", unique_name("n"),
                             workdir=observer.workdir).start()
        try:
            assert relay.wait_exit() == EXIT_CONFIG, relay.log_text()
        finally:
            relay.kill()
        assert "JetStream is not enabled" in relay.log_text()
        with RelayProcess(observer, server.url, "--name", unique_name("n"), "--no-stream",
                          workdir=observer.workdir) as relay:
            wait_until(lambda: "relaying observer" in relay.log_text(), WAIT_S, "the relay")
            assert relay.stop() == 0, relay.log_text()
    finally:
        server.close()


def test_obrelay_imports_neither_the_server_nor_greenlet():
    """obrelay is a client of the observer like any strategy: obclient and proto only."""
    code = ("import sys, obrelay.cli, obrelay.relay, obrelay.link, obrelay.books; "
            "bad = sorted({m.split('.')[0] for m in sys.modules} & "
            "{'observer', 'greenlet', 'posix_ipc', 'orjson'}); print(bad)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=WAIT_S)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_next_incarnation_is_above_the_previous_relays_even_if_the_clock_is_behind():
    import msgpack

    from obrelay.cli import _next_incarnation
    from obproto import relay as wire

    ahead = time.time_ns() + 10**15                    # a previous relay on a clock far ahead
    hb = wire.Heartbeat(wire.TYPE_HEARTBEAT, 1, ahead, 7, 0, 500, True, 1, 0, True, {}, {})
    assert _next_incarnation(wire.encode_heartbeat(msgpack.Packer(), hb)) == ahead + 1
    before = time.time_ns()
    assert _next_incarnation(None) >= before
    assert _next_incarnation(b"\xc1 not msgpack") >= before


def _stream_config(nats_server, name):
    import asyncio

    import nats

    async def get():
        nc = await nats.connect(nats_server.url)
        try:
            return (await nc.jsm().stream_info(f"OB_{name}")).config
        finally:
            await nc.close()
    return asyncio.run(get())


def _add_stream(nats_server, **config):
    import asyncio

    import nats

    async def add():
        nc = await nats.connect(nats_server.url)
        try:
            await nc.jsm().add_stream(**config)
        finally:
            await nc.close()
    asyncio.run(add())


def test_an_existing_stream_is_fixed_to_keep_one_message_per_subject(nats_server, observer):
    name = unique_name("u")
    _add_stream(nats_server, name=f"OB_{name}", subjects=[f"ob.{name}.>"],
                max_msgs_per_subject=10, storage="memory")
    with RelayProcess(observer, nats_server.url, "--name", name,
                      workdir=observer.workdir) as relay:
        wait_until(lambda: "relaying observer" in relay.log_text(), WAIT_S, "the relay")
        assert "updated stream" in relay.log_text()
        config = _stream_config(nats_server, name)
        assert config.max_msgs_per_subject == 1
        assert config.allow_direct
        assert relay.stop() == 0


def test_a_stream_of_other_storage_is_exit_2_naming_the_way_out(nats_server, observer):
    name = unique_name("v")
    _add_stream(nats_server, name=f"OB_{name}", subjects=[f"ob.{name}.>"],
                max_msgs_per_subject=1, storage="file")
    relay = RelayProcess(observer, nats_server.url, "--name", name,
                         workdir=observer.workdir).start()
    try:
        assert relay.wait_exit() == EXIT_CONFIG, relay.log_text()
    finally:
        relay.kill()
    assert "--stream-storage file" in relay.log_text()
