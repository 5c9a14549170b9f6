"""obrelay with the NATS security users configure: mutual TLS (a CA and certificates made in
the test) and decentralised auth (`--creds`, a user JWT and nkey seed signed by an account the
server trusts). What works relays books exactly; what is refused is one clear line and exit 2,
never a retry loop that hides a wrong setting."""

import shutil
import ssl

import pytest

from natskit import NatsServer, make_operator_auth, make_tls_files, tempdir, tls_conf
from kit.procs import unique_name
from relaykit import ExactnessCheck, RelayProcess, Subscriber

BOOKS = ("synthetic:BTCUSD", "synthetic:ETHUSD")
EXIT_CONFIG = 2


@pytest.fixture(scope="module")
def secrets_dir(workdir):
    path = tempdir("obsecrets-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_files(secrets_dir):
    return make_tls_files(secrets_dir)


@pytest.fixture(scope="module")
def tls_server(workdir, tls_files):
    server = NatsServer(workdir, unique_name("tls"),
                        extra_conf=tls_conf(tls_files, verify_clients=True)).start()
    try:
        yield server.wait_ready()
    finally:
        server.close()


@pytest.fixture(scope="module")
def auth(secrets_dir):
    return make_operator_auth(secrets_dir)


@pytest.fixture(scope="module")
def auth_server(workdir, auth):
    server = NatsServer(workdir, unique_name("auth"), extra_conf=auth[0]).start()
    try:
        yield server.wait_ready()
    finally:
        server.close()


def _tls_url(server) -> str:
    return server.url.replace("nats://", "tls://")


def _client_tls(files) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(files["ca"]))
    ctx.load_cert_chain(str(files["client"]), str(files["client_key"]))
    return ctx


def _relays_books_exactly(sub, relay) -> None:
    sub.run_until(lambda got: all(len(got.of(b)) >= 10 for b in BOOKS) and got.heartbeats,
                  "books over the secured connection")
    assert relay.proc.poll() is None, relay.log_text()
    check = ExactnessCheck()
    for book in BOOKS:
        for msg in sub.got.of(book):
            check.check(msg)


def test_mutual_tls_relays_books(tls_server, tls_files, observer):
    name = unique_name("t")
    relay = RelayProcess(observer, _tls_url(tls_server), "--name", name,
                         "--tls-ca", str(tls_files["ca"]), "--tls-cert", str(tls_files["client"]),
                         "--tls-key", str(tls_files["client_key"]), workdir=observer.workdir)
    with Subscriber(_tls_url(tls_server), f"ob.{name}.>", tls=_client_tls(tls_files)) as sub, \
            relay:
        _relays_books_exactly(sub, relay)
        assert sub.got.heartbeats[-1].stats["nats_server"].startswith("tls://")


@pytest.mark.parametrize("case", ["untrusted-server", "no-client-certificate"])
def test_a_tls_refusal_is_one_clear_line_and_exit_2(tls_server, tls_files, observer, case):
    if case == "untrusted-server":      # the server's certificate is not signed by this CA
        args = ["--tls-ca", str(tls_files["other_ca"]), "--tls-cert", str(tls_files["client"]),
                "--tls-key", str(tls_files["client_key"])]
    else:                               # the server requires a client certificate
        args = ["--tls-ca", str(tls_files["ca"])]
    relay = RelayProcess(observer, _tls_url(tls_server), "--name", unique_name("f"), *args,
                         workdir=observer.workdir).start()
    try:
        assert relay.wait_exit() == EXIT_CONFIG, relay.log_text()
    finally:
        relay.kill()
    errors = [line for line in relay.log_text().splitlines() if " ERROR " in line]
    assert len(errors) == 1, relay.log_text()
    assert "tls" in errors[0].lower() or "certificate" in errors[0].lower()


def test_creds_relay_books(auth_server, auth, observer):
    _, user_creds, _ = auth
    name = unique_name("a")
    relay = RelayProcess(observer, auth_server.url, "--name", name, "--creds", str(user_creds),
                         workdir=observer.workdir)
    with Subscriber(auth_server.url, f"ob.{name}.>", user_credentials=str(user_creds)) as sub, \
            relay:
        _relays_books_exactly(sub, relay)


def test_refused_creds_are_one_clear_line_and_exit_2(auth_server, auth, observer):
    _, _, stranger_creds = auth
    relay = RelayProcess(observer, auth_server.url, "--name", unique_name("b"),
                         "--creds", str(stranger_creds), workdir=observer.workdir).start()
    try:
        assert relay.wait_exit() == EXIT_CONFIG, relay.log_text()
    finally:
        relay.kill()
    errors = [line for line in relay.log_text().splitlines() if " ERROR " in line]
    assert len(errors) == 1, relay.log_text()
    assert "authorization" in errors[0].lower()
