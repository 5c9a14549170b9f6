"""The zygote: the one process that can start shard processes once the segment is sealed.

Why it exists. The segment is a sealed memfd (observer/shm/segment.py): after the seal no
process can map it writable, not even ours, so a shard started afterwards could never write its
books. With --cores, the supervisor therefore starts this small, clean interpreter BEFORE the
seal (`python -m observer.process.zygote`): it inherits the read-write memfd and the shard eventfds,
maps the segment read-write, closes the memfd (keeping the mapping) and says ready. Only then
does the supervisor seal; meanwhile the zygote imports what a shard needs, so the observer's
start-up does not wait for those imports (a SPAWN waits in the socket until they are done). Every shard process, the first ones and
every restart, is a fork of the zygote: it inherits the mapping and the eventfds, and runs
`observer.process.shardproc.run` on them.

Why fork here and not in the supervisor: the supervisor runs a loom loop, a thread pool and the
control server; a forked copy of it would inherit fibers, epoll registrations, client sockets
and locks held by threads that do not exist in the child. The zygote is single-threaded (it
asserts it, and runs OpenBLAS with one thread so numpy starts none), has no loop and holds
nothing but the mapping, the eventfds and its socket to the supervisor, which a shard closes
first thing.

The conversation, over a SOCK_SEQPACKET socketpair (one message per send, 32 bytes each, see
`_MESSAGE`), supervisor to zygote: SPAWN(shard_index) carrying a memfd with the pickled
`ShardSpec`; zygote to supervisor: READY once, then per SPAWN either STARTED(shard_index, pid)
carrying a pidfd (so the supervisor's watchers wait on a pidfd as for any child, and signal
through it with no pid-reuse race) or FAILED(shard_index, errno), and EXITED(pid, code) when a
shard ends: the zygote is its parent, so only the zygote can reap it and learn its status.

Lifetimes. The zygote dies with the supervisor (PR_SET_PDEATHSIG, then a parent check), and
every shard dies with the zygote the same way. When the supervisor closes its end the zygote
kills what is left and exits 0. A zygote that dies while the supervisor lives cannot be
replaced (nothing can map the segment writable any more): the supervisor logs `zygote_exit` and
stops with a non-zero exit, for a service manager to start a new generation (clients reattach,
C9). The zygote and the shards are not dumpable (observer/process/prctl.py).

Exit codes: 0 after the supervisor closed the socket, 4 when the supervisor was already gone at
start-up, 2 for arguments or inherited fds it cannot use (a bug, reported with its reason).
"""

from __future__ import annotations

import argparse
import errno
import faulthandler
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import sys

from observer.process import prctl

log = logging.getLogger("observer.process.supervisor")

READY_TIMEOUT_S = 60.0       # a fresh interpreter importing a shard's modules on a busy host
SPAWN_TIMEOUT_S = 60.0       # a fork and a reply, after the zygote's imports the first time
STOP_S = 5.0                 # for the zygote to exit after its socket closed
EXIT_BAD_START = 2
EXIT_ORPHANED = 4
SHARD_EXIT_FAILED = 1        # a shard whose run raised (the traceback is on stderr)
_MESSAGE = struct.Struct("<4s4xqqq")     # kind, then up to three integers
KIND_READY = b"RDY\0"        # (zygote pid)
KIND_SPAWN = b"SPN\0"        # (shard_index), fds: [spec memfd]
KIND_STARTED = b"STA\0"      # (shard_index, pid), fds: [pidfd]
KIND_FAILED = b"FAI\0"       # (shard_index, errno)
KIND_EXITED = b"EXI\0"       # (pid, exit code as subprocess reports it: -N for signal N)
# Modules a shard imports, loaded once here so a fork starts from them warm.
WARM_MODULES = ("observer.process.shardproc", "observer.telemetry.logs", "observer.loom",
                "observer.shard.feedplan", "observer.shard.runner", "observer.shm",
                "observer.shard.feedsink", "observer.shard.exchangefeed", "observer.shard.tickfeed",
                "observer.feeds.synthetic", "observer.feeds.binance",
                "observer.feeds.binance_futures", "observer.feeds.bybit",
                "observer.feeds.coinbase", "observer.feeds.kraken", "observer.feeds.okx",
                "observer.net.tls", "observer.net.websocket", "observer.net.http")


def _pack(kind: bytes, a: int = 0, b: int = 0, c: int = 0) -> bytes:
    return _MESSAGE.pack(kind, a, b, c)


def _recv(sock: socket.socket) -> tuple[bytes, tuple, list[int]]:
    """One message: (kind, (a, b, c), fds); kind b"" at EOF. Raises ValueError on a message
    of the wrong size (its fds are closed first)."""
    data, fds, _, _ = socket.recv_fds(sock, _MESSAGE.size + 1, 4)
    if not data:
        _close_all(fds)
        return b"", (0, 0, 0), []
    if len(data) != _MESSAGE.size:
        _close_all(fds)
        raise ValueError(f"zygote message of {len(data)} bytes, expected {_MESSAGE.size}")
    kind, *values = _MESSAGE.unpack(data)
    return kind, tuple(values), fds


def _close_all(fds) -> None:
    for fd in fds:
        os.close(fd)


# -- the supervisor's side ---------------------------------------------------------------------

class ShardProcess:
    """A shard forked by the zygote: what `ShardManager` needs of a child process."""

    def __init__(self, pid: int, pidfd: int):
        from observer import loom

        self.pid = pid
        self.pidfd = pidfd             # ours; readable once the process has ended
        self.returncode: int | None = None
        self._exited = loom.Event()

    def send_signal(self, signum: int) -> None:
        """Signal it through its pidfd: never another process that reused the pid."""
        if self.returncode is None and self.pidfd >= 0:
            try:
                signal.pidfd_send_signal(self.pidfd, signum)
            except ProcessLookupError:
                pass                    # ended; its EXITED report is on its way

    def wait(self) -> int:
        """From a fiber: its exit code, as the zygote reported it."""
        return self._exited.wait()

    def wait_gone(self, timeout_s: float) -> bool:
        """From plain code (no loop): block until it has ended, at most `timeout_s`."""
        if self.pidfd < 0:
            return True
        poller = select.poll()
        poller.register(self.pidfd, select.POLLIN)
        return bool(poller.poll(int(timeout_s * 1000)))

    def exited(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
            self._exited.post(code)

    def close(self) -> None:
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


class ZygoteGone(OSError):
    """The zygote is not running (never started, or died): no shard can be started."""


class Zygote:
    """The supervisor's handle: start it before the seal, then `serve` it from the loop."""

    def __init__(self, name: str, segment_fd: int, eventfds: list[int], board_fd: int):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        self.sock = ours
        try:
            self.proc = _start_process(name, theirs.fileno(), segment_fd, eventfds, board_fd)
        finally:
            theirs.close()
        self.pid = self.proc.pid
        self.returncode: int | None = None
        self._pending: dict[int, object] = {}        # shard_index -> Event of its spawn
        self._processes: dict[int, ShardProcess] = {}  # pid -> running shard
        self._reader = None
        self._loop = None
        try:
            self._await_ready()
        except BaseException:
            self.stop()
            raise

    def _await_ready(self) -> None:
        self.sock.settimeout(READY_TIMEOUT_S)
        try:
            kind, (pid, _, _), fds = _recv(self.sock)
        except (OSError, ValueError) as exc:   # socket.timeout is an OSError
            raise ZygoteGone(errno.ECHILD, f"zygote not ready: {exc}") from None
        _close_all(fds)
        if kind != KIND_READY or pid != self.pid:
            raise ZygoteGone(errno.ECHILD, "zygote ended before it was ready (its reason is "
                                           "on stderr above)")
        self.sock.setblocking(False)

    # -- from the loop -------------------------------------------------------------------------

    def serve(self, loop, on_exit) -> None:
        """Read the zygote's reports in a fiber; `on_exit(returncode)` if the zygote dies
        while we serve (not after `stop`)."""
        self._loop = loop
        self._reader = loop.spawn(self._read_reports, on_exit, name="zygote-reports")

    def spawn(self, spec) -> ShardProcess:
        """From a fiber: fork a shard process for `spec`; raises OSError if it cannot start."""
        from observer import loom
        from observer.process.shardproc import write_spec

        if self.returncode is not None or self._reader is None:
            raise ZygoteGone(errno.ECHILD, "the zygote is gone: no shard can be started")
        assert spec.shard_index not in self._pending
        spec_fd = write_spec(spec)
        reply = self._pending[spec.shard_index] = loom.Event()
        try:
            self._send(_pack(KIND_SPAWN, spec.shard_index), [spec_fd])
            result = reply.wait(SPAWN_TIMEOUT_S)
        finally:
            os.close(spec_fd)
            self._pending.pop(spec.shard_index, None)
        if isinstance(result, BaseException):
            raise result
        return result

    def _send(self, data: bytes, fds: list[int]) -> None:
        from observer import loom

        while True:
            try:
                socket.send_fds(self.sock, [data], fds)
                return
            except BlockingIOError:
                loom.wait_writable(self.sock)

    def _read_reports(self, on_exit) -> None:
        from observer import loom

        while self._read_available():
            loom.wait_readable(self.sock)
        self._died()
        on_exit(self.returncode)

    def _read_available(self) -> bool:
        """Handle every report queued now (a readiness edge may stand for several); False at
        EOF or when the socket failed."""
        while True:
            try:
                kind, values, fds = _recv(self.sock)
            except BlockingIOError:
                return True
            except (OSError, ValueError) as exc:
                log.error("zygote_socket_failed", {"error": str(exc)})
                return False
            if not kind:
                return False
            self._on_report(kind, values, fds)

    def _on_report(self, kind: bytes, values: tuple, fds: list[int]) -> None:
        a, b, _ = values
        if kind == KIND_STARTED and len(fds) == 1:
            process = ShardProcess(b, fds[0])
            reply = self._pending.get(a)
            if reply is not None and not reply.is_set():
                self._processes[process.pid] = process
                reply.post(process)
            else:                         # its spawn timed out: it must not run unsupervised
                process.send_signal(signal.SIGKILL)
                process.close()           # its EXITED report finds no process and is dropped
            return
        _close_all(fds)
        if kind == KIND_FAILED:
            reply = self._pending.get(a)
            if reply is not None:
                reply.post(OSError(b, f"zygote could not start shard {a}: {os.strerror(b)}"))
        elif kind == KIND_EXITED:
            process = self._processes.pop(a, None)
            if process is not None:
                process.exited(b)
        else:
            log.error("zygote_report_unknown", {"kind": repr(kind)})

    def _died(self) -> None:
        """The zygote is gone: its shards died with it (PR_SET_PDEATHSIG), unreported."""
        try:
            self.returncode = self.proc.wait(STOP_S)
        except subprocess.TimeoutExpired:    # closed its socket yet lives: a bug; end it
            self.proc.kill()
            self.returncode = self.proc.wait()
        for process in self._processes.values():
            process.exited(-signal.SIGKILL)
        self._processes.clear()
        for index, reply in self._pending.items():
            reply.post(ZygoteGone(errno.ECHILD, f"the zygote died while starting shard {index}"))

    # -- stopping ------------------------------------------------------------------------------

    def stop(self) -> None:
        """Close our end (the zygote kills what is left and exits), wait for it, SIGKILL it if
        it lingers. From plain code or a fiber other than the reader. Idempotent."""
        if self._reader is not None:
            from observer import loom
            from observer.shard.runner import STOP_JOIN_S

            loom.cancel_and_join([self._reader], timeout_s=STOP_JOIN_S)
            self._reader = None
        if self.sock.fileno() >= 0:
            if self._loop is not None:
                self._loop.forget(self.sock)
            self.sock.close()
        if self.returncode is None:
            try:
                self.returncode = self.proc.wait(STOP_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.returncode = self.proc.wait()


def _start_process(name: str, control_fd: int, segment_fd: int, eventfds: list[int],
                   board_fd: int) -> subprocess.Popen:
    # Discussion: PR_SET_PDEATHSIG fires when the THREAD that forked the child ends. The
    # supervisor starts the zygote from its main thread, before the loop runs.
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")   # numpy must start no thread here
    args = [sys.executable, "-m", "observer.process.zygote", "--name", name,
            "--parent-pid", str(os.getpid()), "--control-fd", str(control_fd),
            "--segment-fd", str(segment_fd), "--eventfds", ",".join(map(str, eventfds)),
            "--board-fd", str(board_fd)]
    return subprocess.Popen(args, pass_fds=(control_fd, segment_fd, board_fd, *eventfds),
                            close_fds=True,
                            stdin=subprocess.DEVNULL, env=env)


# -- the zygote process ------------------------------------------------------------------------

def _parse(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="observer.process.zygote",
                                description="Started by the observer supervisor; not by hand.")
    p.add_argument("--name", required=True)
    p.add_argument("--parent-pid", type=int, required=True)
    p.add_argument("--control-fd", type=int, required=True)
    p.add_argument("--segment-fd", type=int, required=True)
    p.add_argument("--eventfds", required=True)
    p.add_argument("--board-fd", type=int, required=True)
    return p.parse_args(argv)


def main(argv=None) -> int:
    # The supervisor decides the order of a stop; a signal to the whole process group or
    # control group (Ctrl-C, a service manager's stop) must not end the zygote first. It ends
    # when the supervisor closes its socket, or dies (PR_SET_PDEATHSIG). Shards set their own
    # SIGTERM handler.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    faulthandler.enable(sys.stderr)     # a crash logs its stack (cli.py); shards inherit it
    try:
        args = _parse(sys.argv[1:] if argv is None else argv)
        eventfds = [int(fd) for fd in args.eventfds.split(",") if fd]
        os.fstat(args.control_fd)
    except (SystemExit, ValueError, OSError) as exc:
        print(f"observer zygote: unusable arguments: {exc}", file=sys.stderr)
        return EXIT_BAD_START
    prctl.die_with_parent(args.parent_pid, EXIT_ORPHANED)
    prctl.forbid_inspection()
    prctl.set_name("ob-zygote")
    from observer.shm import Segment

    segment = Segment.attach_fd(args.segment_fd, eventfds, args.board_fd)
    os.close(args.segment_fd)
    os.close(args.board_fd)             # the mapping of the board stays, as the segment's
    segment.close_fd()                  # the mapping stays; nothing forked from here holds an fd
    control = socket.socket(fileno=args.control_fd)
    try:
        control.sendall(_pack(KIND_READY, os.getpid()))
    except (BrokenPipeError, ConnectionResetError):
        return 0                        # the supervisor died; PR_SET_PDEATHSIG is on its way
    _warm()                             # while the supervisor seals and serves: SPAWNs wait
    return _serve(control, segment)


def _warm() -> None:
    """Import what a shard needs once, here, so that every fork starts with it loaded."""
    import importlib

    for module in WARM_MODULES:
        importlib.import_module(module)
    assert len(os.listdir("/proc/self/task")) == 1, "the zygote must be single-threaded to fork"


def _serve(control: socket.socket, segment) -> int:
    """Answer SPAWNs and report exits until the supervisor closes its end."""
    children: dict[int, int] = {}        # pidfd -> pid
    poller = select.poll()
    poller.register(control, select.POLLIN)
    try:
        _answer(control, segment, children, poller)
    except (BrokenPipeError, ConnectionResetError):
        pass                             # the supervisor is gone, mid-report
    return _shutdown(children)


def _answer(control: socket.socket, segment, children: dict, poller) -> None:
    while True:
        for fd, _ in poller.poll():
            if fd != control.fileno():
                _reap(fd, children, poller, control)
                continue
            kind, (shard_index, _, _), fds = _recv(control)
            if not kind:
                return
            if kind != KIND_SPAWN or len(fds) != 1:
                _close_all(fds)
                control.sendall(_pack(KIND_FAILED, shard_index, errno.EINVAL))
                continue
            _spawn(fds[0], shard_index, segment, control, children, poller)


def _spawn(spec_fd: int, shard_index: int, segment, control, children, poller) -> None:
    from observer.process.shardproc import read_spec

    try:
        spec = read_spec(spec_fd)
    except Exception as exc:
        print(f"observer zygote: unusable spec for shard {shard_index}: {exc}", file=sys.stderr)
        control.sendall(_pack(KIND_FAILED, shard_index, errno.EINVAL))
        return
    finally:
        os.close(spec_fd)
    zygote_pid = os.getpid()
    try:
        pid = os.fork()
    except OSError as exc:              # EAGAIN, ENOMEM: the supervisor retries after backoff
        control.sendall(_pack(KIND_FAILED, shard_index, exc.errno or errno.EAGAIN))
        return
    if pid == 0:
        _child(spec, segment, control, children, zygote_pid)     # never returns
    pidfd = os.pidfd_open(pid)
    children[pidfd] = pid
    poller.register(pidfd, select.POLLIN)
    socket.send_fds(control, [_pack(KIND_STARTED, shard_index, pid)], [pidfd])


def _child(spec, segment, control, children, zygote_pid: int) -> None:
    code = SHARD_EXIT_FAILED
    try:
        # The zygote ignores SIGTERM; a shard stops on it (run() installs its handler), and a
        # SIGTERM that comes before that must end it as it would a fresh process.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        control.close()                 # the supervisor must see EOF when the ZYGOTE dies
        _close_all(children)            # siblings' pidfds
        prctl.die_with_parent(zygote_pid, EXIT_ORPHANED)
        prctl.set_name(f"ob-shard{spec.shard_index}")
        from observer.process.shardproc import run

        code = run(spec, segment)
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _reap(pidfd: int, children: dict, poller, control) -> None:
    pid = children.pop(pidfd)
    poller.unregister(pidfd)
    os.close(pidfd)
    _, status = os.waitpid(pid, 0)
    control.sendall(_pack(KIND_EXITED, pid, os.waitstatus_to_exitcode(status)))


def _shutdown(children: dict) -> int:
    """The supervisor closed its end: nothing may outlive it. Kill, reap, exit."""
    for pidfd in children:
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pidfd, pid in children.items():
        os.waitpid(pid, 0)
        os.close(pidfd)
    children.clear()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
