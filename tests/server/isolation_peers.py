"""Client processes for the isolation tests: a victim, and a hostile client in two modes.

    python isolation_peers.py victim SOCKET RECORDS WAIT_S
    python isolation_peers.py hostile-wake SOCKET
    python isolation_peers.py hostile-write SOCKET [--as-uid UID]

Each gets its fds through the real hello (SCM_RIGHTS), as any client does, and reports one JSON
line on stdout. Only the standard library, numpy-free obclient modules and ctypes are used, so
`--as-uid` can drop to another uid after the imports (the interpreter may live where that uid
cannot read).

victim: follows every shard's ring with obclient (`SegmentReader.follow`), blocked in
`SegmentReader.wait(WAIT_S)` between records. It prints "ready", starts counting on a line on
stdin, and after RECORDS records (or a wait that ended by its timeout) reports how many waits
it made, how many ended by an event and by the timeout, and whether it missed a record.

hostile-wake: does everything it can to every wake fd (module `attack_wake_fds`), prints
"attacking" after the first round, goes on until stdin closes, and reports what each attempt
gave the first time.

hostile-write: tries every path to the segment's bytes and to the observer processes, once, and
reports each attempt's outcome and whether the bytes it aimed at changed.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import mmap
import os
import select
import socket
import sys

from obclient.protocol import ClientProtocol
from obproto.segment import SegmentReader
from obproto import layout

SATURATED = 2**64 - 2
SPAM_WRITES = 100
FD_PROBE_MAX = 256
PTRACE_ATTACH = 16
PTRACE_DETACH = 17
SYS_PIDFD_GETFD = 438          # the same number on every Linux architecture
FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2
REPLY_WAIT_S = 30.0
_libc = ctypes.CDLL(None, use_errno=True)


def hello(path: str) -> tuple[socket.socket, object, list[int]]:
    """Connect and say hello; (socket, welcome, passed fds)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(REPLY_WAIT_S)
    sock.connect(path)
    proto = ClientProtocol("isolation-peer")
    req_id, data = proto.hello(want_fds=True)
    sock.sendall(data)
    fds: list[int] = []
    while (reply := proto.take_reply(req_id)) is None:
        data, got, _, _ = socket.recv_fds(sock, 1 << 16, 64)
        fds.extend(got)
        if not data:
            raise EOFError("observer closed before its welcome")
        proto.receive_data(data)
    return sock, reply, fds


def outcome(attempt) -> str:
    """'allowed', or the errno name that refused it."""
    try:
        attempt()
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return "allowed"


def _raise_errno(result: int) -> int:
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


# -- victim -----------------------------------------------------------------------------------

def victim(path: str, records_want: int, wait_s: float) -> dict:
    sock, _, fds = hello(path)
    reader = SegmentReader(fds[0], fds[1:], own_fds=True)
    shards = range(reader.geometry.shards_n)
    follower = reader.follow()
    print("ready", flush=True)
    sys.stdin.readline()                       # "go": the hostile has done its worst
    follower.poll()                            # count from here
    heads_start = [reader.ring_head(i) for i in shards]
    got = {"records": 0, "waits": 0, "by_event": 0, "by_timeout": 0}
    while got["records"] < records_want and not got["by_timeout"]:
        batch = follower.poll()
        got["records"] += len(batch)
        if batch:
            continue
        events = reader.wait(wait_s)
        got["waits"] += 1
        got["by_event" if events else "by_timeout"] += 1
    got["records"] += len(follower.poll())
    got["published"] = sum(reader.ring_head(i) - heads_start[i] for i in shards)
    got["overruns"] = follower.overruns
    reader.close()
    sock.close()
    return got


# -- hostile: the wake fds --------------------------------------------------------------------

def attack_wake_fds(wake_fds: list[int], own_eventfd: int, held: set, first: dict) -> None:
    """One round of everything a client can do to its wake fds.

    A client that managed to saturate a shard's eventfd (possible when clients were handed
    the eventfds themselves) holds it: reading it again would only undo its own attack.
    """
    for fd in wake_fds:
        tried = {}
        if fd not in held:
            tried["read"] = outcome(lambda: os.read(fd, 8))
            tried["write_saturate"] = outcome(lambda: os.eventfd_write(fd, SATURATED))
            if tried["write_saturate"] == "allowed":
                held.add(fd)
        tried["clear_nonblock"] = outcome(
            lambda: fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK))
        tried["epoll_wait"] = outcome(lambda: _epoll_on(fd, lambda ep: ep.poll(0)))
        tried["add_own_fd"] = outcome(
            lambda: _epoll_on(fd, lambda ep: ep.register(own_eventfd, select.EPOLLIN)))
        tried["reopen"] = outcome(lambda: os.close(os.open(f"/proc/self/fd/{fd}", os.O_RDWR)))
        for key, value in tried.items():
            first.setdefault(f"{fd}:{key}", value)
    for _ in range(SPAM_WRITES):
        os.eventfd_write(own_eventfd, 1)


def _epoll_on(fd: int, action) -> None:
    """Use a passed fd as an epoll instance (EINVAL if it is not one)."""
    ep = select.epoll.fromfd(os.dup(fd))
    try:
        action(ep)
    finally:
        ep.close()


def hostile_wake(path: str) -> dict:
    sock, _, fds = hello(path)
    own = os.eventfd(0, os.EFD_NONBLOCK)
    held: set = set()
    first: dict = {}
    attack_wake_fds(fds[1:], own, held, first)
    print("attacking", flush=True)
    stdin_fd = sys.stdin.fileno()
    rounds = 1
    while True:
        readable, _, _ = select.select([stdin_fd], [], [], 0)
        if readable and os.read(stdin_fd, 1) == b"":
            break                              # the test closed our stdin: stop
        attack_wake_fds(fds[1:], own, held, {})
        rounds += 1
        os.sched_yield()
    closes = [outcome(lambda fd=fd: os.close(fd)) for fd in fds[1:]]
    os.close(fds[0])
    sock.close()
    return {"first": first, "rounds": rounds, "held": len(held), "closes": closes}


# -- hostile: the segment's bytes and the observer's processes -------------------------------

def hostile_write(path: str) -> dict:
    sock, welcome, fds = hello(path)
    seg_fd, size = fds[0], os.fstat(fds[0]).st_size
    view = mmap.mmap(seg_fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
    geometry = layout.check_header(view, size)
    target = geometry.descs_offset                  # bytes the observer never rewrites
    before = bytes(view[:geometry.stats_offset])
    state_offset = layout.HEADER.fields["state"][1]
    tried = _attack_fd(seg_fd, size, target, "handed_")
    tried["reopen_rdwr"] = outcome(lambda: os.close(os.open(f"/proc/self/fd/{seg_fd}", os.O_RDWR)))
    tried["fchmod_0600"] = outcome(lambda: os.fchmod(seg_fd, 0o600))
    try:
        rw_fd = os.open(f"/proc/self/fd/{seg_fd}", os.O_RDWR)
    except OSError as exc:
        tried["reopen_rdwr_after_fchmod"] = errno.errorcode[exc.errno]
    else:
        tried["reopen_rdwr_after_fchmod"] = "allowed"
        tried.update(_attack_fd(rw_fd, size, target, "reopened_"))
        tried["reopened_write_state"] = outcome(
            lambda: os.pwrite(rw_fd, (2).to_bytes(8, "little"), state_offset))
        os.close(rw_fd)
    tried.update(_attack_processes(_observer_pids(welcome.pid)))
    after = bytes(view[:geometry.stats_offset])
    result = {"tried": tried, "descs_unchanged": before[target:] == after[target:],
              "state": int.from_bytes(after[state_offset:state_offset + 8], "little"),
              "magic_unchanged": before[:8] == after[:8]}
    view.close()
    for fd in fds:
        os.close(fd)
    sock.close()
    return result


def _attack_fd(fd: int, size: int, target: int, prefix: str) -> dict:
    junk = b"\xff" * 8
    return {
        prefix + "mmap_write": outcome(
            lambda: mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)),
        prefix + "mprotect_write": outcome(lambda: _mprotect_writable(fd, size)),
        prefix + "pwrite": outcome(lambda: os.pwrite(fd, junk, target)),
        prefix + "ftruncate": outcome(lambda: os.ftruncate(fd, 0)),
        prefix + "fallocate_punch": outcome(lambda: _raise_errno(_libc.fallocate(
            fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, ctypes.c_long(0),
            ctypes.c_long(size)))),
    }


def _mprotect_writable(fd: int, size: int) -> None:
    _libc.mmap.restype = ctypes.c_void_p
    _libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                           ctypes.c_int, ctypes.c_long)
    address = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    if address in (None, ctypes.c_void_p(-1).value):
        _raise_errno(-1)
    try:
        _raise_errno(_libc.mprotect(ctypes.c_void_p(address), ctypes.c_size_t(size),
                                    mmap.PROT_READ | mmap.PROT_WRITE))
    finally:
        _libc.munmap(ctypes.c_void_p(address), ctypes.c_size_t(size))


def _observer_pids(supervisor_pid: int) -> dict:
    """The supervisor, its zygote and shard processes (their pids from /proc, readable by all)."""
    pids = {"supervisor": supervisor_pid}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            with open(f"/proc/{entry}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        if int(fields[1]) == supervisor_pid and comm == "ob-zygote":
            pids["zygote"] = int(entry)
    zygote = pids.get("zygote")
    for entry in os.listdir("/proc"):
        if zygote is None or not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == zygote:
            pids[f"shard_{entry}"] = int(entry)
    return pids


def _attack_processes(pids: dict) -> dict:
    tried = {}
    for role, pid in pids.items():
        tried[f"{role}_proc_fd_open"] = outcome(lambda pid=pid: _open_proc_fds(pid))
        tried[f"{role}_proc_mem"] = outcome(
            lambda pid=pid: os.close(os.open(f"/proc/{pid}/mem", os.O_RDWR)))
        tried[f"{role}_pidfd_getfd"] = outcome(lambda pid=pid: _pidfd_getfd_any(pid))
        tried[f"{role}_ptrace_attach"] = outcome(lambda pid=pid: _ptrace_attach(pid))
        tried[f"{role}_process_vm_writev"] = outcome(lambda pid=pid: _vm_write(pid))
    tried["observer_processes"] = len(pids)
    return tried


def _ptrace_attach(pid: int) -> None:
    _raise_errno(_libc.ptrace(PTRACE_ATTACH, pid, None, None))
    os.waitpid(pid, os.WALL if hasattr(os, "WALL") else 0x40000000)   # it stopped: let it go
    _libc.ptrace(PTRACE_DETACH, pid, None, None)


def _open_proc_fds(pid: int) -> None:
    """Open any fd of `pid` through /proc; raise the first refusal if none opened."""
    entries = os.listdir(f"/proc/{pid}/fd")
    refusal = None
    for entry in entries:
        try:
            os.close(os.open(f"/proc/{pid}/fd/{entry}", os.O_RDONLY))
            return
        except OSError as exc:
            refusal = refusal or exc
    raise refusal or OSError(errno.ENOENT, "no fds listed")


def _pidfd_getfd_any(pid: int) -> None:
    pidfd = os.pidfd_open(pid)
    try:
        refusal = None
        for target in range(FD_PROBE_MAX):
            got = _libc.syscall(SYS_PIDFD_GETFD, pidfd, target, 0)
            if got >= 0:
                os.close(got)
                return
            err = ctypes.get_errno()
            if err != errno.EBADF:             # EBADF: no such fd there; keep looking
                refusal = OSError(err, os.strerror(err))
                break
        raise refusal or OSError(errno.EBADF, "no fd found")
    finally:
        os.close(pidfd)


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def _vm_write(pid: int) -> None:
    data = ctypes.create_string_buffer(b"\xff" * 8)
    local = _IoVec(ctypes.addressof(data), 8)
    remote = _IoVec(0x10000, 8)
    _raise_errno(_libc.process_vm_writev(pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0))


def drop_to(uid: int) -> None:
    """Become `uid` (and its gid, no supplementary groups): a process of another uid."""
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def main(argv: list[str]) -> int:
    mode, path = argv[0], argv[1]
    if "--as-uid" in argv:
        drop_to(int(argv[argv.index("--as-uid") + 1]))
    if mode == "victim":
        result = victim(path, int(argv[2]), float(argv[3]))
    elif mode == "hostile-wake":
        result = hostile_wake(path)
    elif mode == "hostile-write":
        result = hostile_write(path)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
