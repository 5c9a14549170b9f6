"""ControlServer on a real loom loop (in a thread of this process) with real unix sockets:
the admission rules (SO_PEERCRED allow-list, clients_max, per-uid and per-pid limits) that a
full observer cannot vary, and what a refused client is told."""

import errno
import os
import socket
import stat
import subprocess
import sys
import threading

import pytest

import obclient
from obclient.protocol import ClientProtocol
from observer import loom
from observer.config.settings import ClientLimits
from observer.server.control import ControlServer, SocketInUse, bind_socket, peer_credentials
from kit.procs import unique_name, wait_until
from obproto import messages as m

from test_server_protocol import TableCatalog

WAIT_S = 20.0


class ServerThread:
    """A loom loop in its own thread serving a ControlServer until stopped."""

    def __init__(self, path, **kw):
        self.path = path
        self.kw = kw
        self.server = None
        self.ready = threading.Event()
        self.error = None
        self._stop_r, self._stop_w = socket.socketpair()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            loop = loom.Loop(backend=self.kw.pop("backend", None))
            self.server = ControlServer(loop, TableCatalog(), self.path, **self.kw)
            loop.run(self._main, loop)
            loop.close()
        except BaseException as exc:  # reported to the test thread
            self.error = exc
            self.ready.set()

    def _main(self, loop):
        self.server.start()
        self.ready.set()
        loom.recv(self._stop_r, 1)
        self.server.close()

    def __enter__(self):
        self.thread.start()
        assert self.ready.wait(WAIT_S)
        assert self.error is None, self.error
        return self

    def __exit__(self, *exc):
        self._stop_w.send(b"x")
        self.thread.join(WAIT_S)
        self._stop_r.close()
        self._stop_w.close()
        assert not self.thread.is_alive()


def connect(path):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(WAIT_S)
    sock.connect(path)
    return sock


def exchange(sock, proto, req_id, data):
    sock.sendall(data)
    while (reply := proto.take_reply(req_id)) is None:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("closed before the reply")
        proto.receive_data(chunk)
    return reply


def first_message_then_eof(sock):
    proto, chunks = ClientProtocol(), []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    proto.receive_data(b"".join(chunks))
    return proto.unsolicited_errors[-1]


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / f"{unique_name()}.sock")


def test_serves_hello_without_fds_and_removes_socket_on_close(path):
    with ServerThread(path):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        sock, proto = connect(path), ClientProtocol("t")
        welcome = exchange(sock, proto, *proto.hello(want_fds=False))
        assert type(welcome) is m.Welcome
        assert not welcome.fds_passed
        books = exchange(sock, proto, *proto.request(m.ListBooks))
        assert len(books.books) == 3
        sock.close()
    assert not os.path.exists(path)


def test_peer_outside_the_allow_list_is_denied(path):
    with ServerThread(path) as st:
        st.server.admission.allow_uids = frozenset()          # not even our own uid
        sock = connect(path)
        err = first_message_then_eof(sock)
        assert err.code == m.ErrorCode.DENIED
        sock.close()
        assert st.server.denied == 1


def test_peer_allowed_by_gid(path):
    with ServerThread(path, allow_gids=(os.getgid(),)) as st:
        st.server.admission.allow_uids = frozenset()
        sock, proto = connect(path), ClientProtocol()
        assert type(exchange(sock, proto, *proto.hello(want_fds=False))) is m.Welcome
        sock.close()


def test_clients_past_the_limit_get_busy_and_fds_stay_bounded(path):
    with ServerThread(path, limits=ClientLimits(clients_max=2)) as st:
        kept = []
        for _ in range(2):
            sock, proto = connect(path), ClientProtocol()
            exchange(sock, proto, *proto.hello(want_fds=False))
            kept.append(sock)
        for _ in range(5):
            extra = connect(path)
            assert first_message_then_eof(extra).code == m.ErrorCode.BUSY
            extra.close()
        assert st.server.refused_busy == 5
        assert len(st.server.clients) == 2
        for sock in kept:
            sock.close()


def test_peer_credentials_are_the_kernels(path):
    listener = bind_socket(path)
    try:
        client = connect(path)
        conn, _ = listener.accept()
        assert peer_credentials(conn) == (os.getpid(), os.getuid(), os.getgid())
        conn.close()
        client.close()
        with pytest.raises(SocketInUse):
            bind_socket(path)                       # a live listener is never replaced
    finally:
        listener.close()
        os.unlink(path)


def test_a_regular_file_is_never_replaced(path):
    with open(path, "w") as f:
        f.write("precious")
    with pytest.raises(SocketInUse, match="not a socket"):
        bind_socket(path)
    assert open(path).read() == "precious"


def test_an_over_long_path_is_a_clear_error(tmp_path):
    """bind's own OSError for a path past sun_path has no errno ("[Errno None]")."""
    long_path = str(tmp_path / ("s" * 120))
    with pytest.raises(OSError, match=r"path is \d+ bytes, at most 107") as caught:
        bind_socket(long_path)
    assert caught.value.errno == errno.ENAMETOOLONG
    assert not os.path.exists(long_path)


def _as_nobody(what) -> str:
    """Fork, become uid/gid 65534, run `what()` (-> bytes): its result, "?" if it raised."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        result = b"?"
        try:
            os.setgid(65534)
            os.setuid(65534)
            result = what()
        finally:
            os.write(write_fd, result)
            os._exit(0)
    os.close(write_fd)
    os.waitpid(pid, 0)
    result = os.read(read_fd, 64).decode()
    os.close(read_fd)
    return result


def _connect_result(path) -> bytes:
    """b"EACCES", or the name of the error code the server sent before closing."""
    try:
        sock = connect(path)
    except PermissionError:
        return b"EACCES"
    return m.ErrorCode.NAMES[first_message_then_eof(sock).code].encode()


def _hello_result(path) -> bytes:
    sock, proto = connect(path), ClientProtocol()
    return exchange(sock, proto, *proto.hello(want_fds=False)).TYPE.encode()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another uid")
def test_another_uid_is_kept_out_by_mode_0660_and_by_peer_credentials():
    import shutil
    import tempfile

    workdir = tempfile.mkdtemp(prefix="obs-uid-")
    os.chmod(workdir, 0o755)                     # the directory lets anyone reach the socket
    path = os.path.join(workdir, "observer.sock")
    try:
        with ServerThread(path) as st:
            # mode 0660, owner root: no connect
            assert _as_nobody(lambda: _connect_result(path)) == "EACCES"
            os.chmod(path, 0o666)                    # an operator widened it by mistake
            # SO_PEERCRED still refuses uid 65534
            assert _as_nobody(lambda: _connect_result(path)) == "DENIED"
            assert st.server.denied == 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another uid")
def test_allow_uids_admits_another_uid():
    import shutil
    import tempfile

    workdir = tempfile.mkdtemp(prefix="obs-uid-")
    os.chmod(workdir, 0o755)
    path = os.path.join(workdir, "observer.sock")
    try:
        with ServerThread(path, allow_uids=(65534,)):
            os.chmod(path, 0o666)
            sock_result = _as_nobody(lambda: _hello_result(path))
            assert sock_result == "welcome"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.parametrize("backend", loom.available_backends())
def test_a_peer_that_never_says_hello_is_closed(path, backend):
    with ServerThread(path, hello_timeout_s=0.2, backend=backend) as st:
        idle = connect(path)
        err = first_message_then_eof(idle)        # no deadline assertion: it just ends
        assert err.code == m.ErrorCode.NOT_READY
        assert "no hello" in err.message
        idle.close()
        wait_until(lambda: not st.server.clients, WAIT_S, "the idle client to be dropped")


@pytest.mark.parametrize("backend", loom.available_backends())
def test_a_peer_silent_after_hello_is_closed_with_idle(path, backend):
    limits = ClientLimits(client_idle_s=1.0)
    with ServerThread(path, limits=limits, backend=backend) as st:
        sock, welcome = hello_or_refusal(path)
        assert welcome.idle_s == 1.0
        err = first_message_then_eof(sock)
        assert err.code == m.ErrorCode.IDLE
        sock.close()
        wait_until(lambda: not st.server.clients, WAIT_S, "the idle client to be dropped")
        assert st.server.stats()["closed_idle"] == 1


@pytest.mark.parametrize("backend", loom.available_backends())
def test_a_peer_that_closes_mid_frame_harms_nothing(path, backend):
    """Half a frame and the peer's FIN usually arrive in one readiness edge: the reader must
    still see the end of stream and drop the connection (no periodic sweep backs it up)."""
    with ServerThread(path, backend=backend) as st:
        sock, proto = connect(path), ClientProtocol()
        exchange(sock, proto, *proto.hello(want_fds=False))
        _, data = proto.request(m.ListBooks)
        sock.sendall(data[: len(data) // 2])          # half a frame, then gone
        sock.close()
        wait_until(lambda: not st.server.clients, WAIT_S, "the half-frame client to be dropped")
        other, proto = connect(path), ClientProtocol()
        assert type(exchange(other, proto, *proto.hello(want_fds=False))) is m.Welcome
        other.close()



@pytest.mark.parametrize("backend", loom.available_backends())
def test_many_peers_that_close_in_every_way_are_all_dropped(path, backend):
    """Peers that go after a whole request, after half a frame, after a shutdown of their write
    side only, or with nothing sent: every connection is dropped on its end of stream alone."""
    clients_n = 24
    with ServerThread(path, backend=backend) as st:
        socks = []
        for i in range(clients_n):
            sock, proto = connect(path), ClientProtocol()
            exchange(sock, proto, *proto.hello(want_fds=False))
            socks.append((sock, proto))
        wait_until(lambda: len(st.server.clients) == clients_n, WAIT_S, "all clients admitted")
        for i, (sock, proto) in enumerate(socks):
            _, data = proto.request(m.ListBooks)
            way = i % 4
            if way == 0:
                sock.sendall(data)                    # a whole request, then gone
            elif way == 1:
                sock.sendall(data[:1])                # one byte of a frame
            elif way == 2:
                sock.sendall(data[: len(data) // 2])
                sock.shutdown(socket.SHUT_WR)         # half-closed: it may still read
                continue
            sock.close()
        wait_until(lambda: not st.server.clients, WAIT_S, "every closing client to be dropped")
        for sock, _ in socks:
            sock.close()


# -- connection limits, and what a refused client is told ------------------------------------------

HOLDER = """
import socket, sys
from obclient.protocol import ClientProtocol
held = []
for _ in range(int(sys.argv[2])):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(sys.argv[1])
    proto = ClientProtocol("holder")
    req_id, data = proto.hello(want_fds=False)
    reply = None
    try:  # a refusal may close us before our hello goes out, or as it arrives
        sock.sendall(data)
        while (reply := proto.take_reply(req_id)) is None and not proto.unsolicited_errors:
            chunk = sock.recv(65536)
            if not chunk:
                break
            proto.receive_data(chunk)
    except (BrokenPipeError, ConnectionResetError):
        proto.receive_data(sock.recv(65536))
    print(reply.TYPE if reply is not None else proto.unsolicited_errors[-1].message, flush=True)
    held.append(sock)
sys.stdin.read()
"""


class Holder:
    """Another process of our uid holding `n` connections (hello said) until closed."""

    def __init__(self, path, n):
        self.proc = subprocess.Popen([sys.executable, "-c", HOLDER, path, str(n)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.results = [self.proc.stdout.readline().strip() for _ in range(n)]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(WAIT_S)
        self.proc.stdout.close()


def hello_or_refusal(path):
    """(socket, the welcome or the error the server refused us with)."""
    sock, proto = connect(path), ClientProtocol()
    req_id, data = proto.hello(want_fds=False)
    try:
        sock.sendall(data)
        while (reply := proto.take_reply(req_id)) is None:
            chunk = sock.recv(65536)
            if not chunk:
                return sock, proto.unsolicited_errors[-1]
            proto.receive_data(chunk)
    except (BrokenPipeError, ConnectionResetError):     # refused as our hello went out
        if not proto.unsolicited_errors:
            proto.receive_data(sock.recv(65536))
        return sock, proto.unsolicited_errors[-1]
    return sock, reply


def test_a_process_past_clients_per_pid_max_gets_busy_naming_the_limit(path):
    with ServerThread(path, limits=ClientLimits(clients_per_pid_max=2)) as st:
        socks = [hello_or_refusal(path) for _ in range(3)]
        assert [type(r) for _, r in socks] == [m.Welcome, m.Welcome, m.Error]
        refusal = socks[2][1]
        assert refusal.code == m.ErrorCode.BUSY
        assert refusal.message == f"clients_per_pid_max=2 reached for pid {os.getpid()}"
        holder = Holder(path, 1)                       # another process is still served
        assert holder.results == ["welcome"]
        holder.close()
        for sock, _ in socks:
            sock.close()
        wait_until(lambda: not st.server.clients, WAIT_S, "every client to be dropped")
        assert st.server.admission.clients == 0


def test_a_uid_past_clients_per_uid_max_gets_busy_naming_the_limit(path):
    limits = ClientLimits(clients_per_uid_max=3, clients_per_pid_max=2)
    with ServerThread(path, limits=limits):
        socks = [hello_or_refusal(path) for _ in range(2)]
        holder = Holder(path, 2)
        assert holder.results == [
            "welcome", f"clients_per_uid_max=3 reached for uid {os.getuid()}"]
        holder.close()
        for sock, _ in socks:
            sock.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another uid")
def test_a_uid_at_its_limit_leaves_room_for_another_uid():
    import shutil
    import tempfile

    workdir = tempfile.mkdtemp(prefix="obs-uid-")
    os.chmod(workdir, 0o755)
    path = os.path.join(workdir, "observer.sock")
    limits = ClientLimits(clients_per_uid_max=2)
    try:
        with ServerThread(path, allow_uids=(65534,), limits=limits):
            os.chmod(path, 0o666)
            socks = [hello_or_refusal(path) for _ in range(3)]
            assert [type(r) for _, r in socks] == [m.Welcome, m.Welcome, m.Error]
            assert _as_nobody(lambda: _hello_result(path)) == "welcome"
            for sock, _ in socks:
                sock.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_obclient_raises_server_refused_with_the_busy_reason_every_time(path):
    with ServerThread(path, limits=ClientLimits(clients_max=1)):
        sock, welcome = hello_or_refusal(path)
        assert type(welcome) is m.Welcome
        for _ in range(50):              # whichever way the race goes: the reason, not a reset
            with pytest.raises(obclient.ServerRefused) as refused:
                obclient.connect(path, timeout_s=WAIT_S)
            assert refused.value.code == m.ErrorCode.BUSY
            assert refused.value.code_name == "BUSY"
            assert refused.value.reason == "clients_max=1 reached"
        done = subprocess.run([sys.executable, "-m", "obclient.obctl", "--socket", path, "list"],
                              capture_output=True, text=True, timeout=WAIT_S)
        assert done.returncode == 3
        assert done.stderr == "obctl: refused by the observer: BUSY: clients_max=1 reached\n"
        sock.close()


def test_obclient_and_obctl_report_a_denial_with_the_servers_reason(path):
    with ServerThread(path) as st:
        st.server.admission.allow_uids = frozenset()      # not even our own uid
        reason = (f"uid {os.getuid()} not allowed: see allow_uids "
                  f"(or allow_gids for its gid {os.getgid()})")
        with pytest.raises(obclient.ServerRefused) as refused:
            obclient.connect(path, timeout_s=WAIT_S)
        assert refused.value.code == m.ErrorCode.DENIED
        assert refused.value.reason == reason
        done = subprocess.run([sys.executable, "-m", "obclient.obctl", "--socket", path, "stats"],
                              capture_output=True, text=True, timeout=WAIT_S)
        assert done.returncode == 3
        assert done.stderr == f"obctl: refused by the observer: DENIED: {reason}\n"


def test_shutdown_tells_every_client_why_before_closing(path):
    with ServerThread(path):
        socks = [hello_or_refusal(path)[0] for _ in range(3)]
    for sock in socks:                                   # the server is closed now
        err = first_message_then_eof(sock)
        assert err.code == m.ErrorCode.SHUTTING_DOWN
        sock.close()
