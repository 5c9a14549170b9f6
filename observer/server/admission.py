"""Who may hold a control-socket connection: the allow-list, the connection limits, a spare fd.

Why a module: admission is the server's whole defence against a careless or hostile peer that
cannot be told apart from a client until it has one, so its rules sit in one place, in the order
they are checked, each refusal worded the way obctl prints it to the user.

Decided once per accepted connection, from the kernel's SO_PEERCRED (pid, uid, gid at connect;
the peer cannot forge them):
1. DENIED unless the uid is ours or in `allow_uids`, or the gid is in `allow_gids`;
2. BUSY past `clients_max` connections in all,
3. or `clients_per_uid_max` of that uid (one user cannot lock the others out),
4. or `clients_per_pid_max` of that pid (one process cannot take its uid's share; obclient
   needs one connection per `Client`).
A connection that holds its slot by saying nothing is closed by the idle limit (control.py),
so these limits bound how many a peer can hold at once, and the idle limit for how long.

A refused peer is always told why, never reset: even a process out of fds can accept one more
connection by giving back the fd it kept in reserve (`ReserveFd`), write BUSY on it and close it.
"""

from __future__ import annotations

import errno
import os

from observer.config.settings import ClientLimits
from obproto import messages as m


class Admission:
    """The allow-list and the live connection counts, per uid and per pid."""

    def __init__(self, limits: ClientLimits, allow_uids=(), allow_gids=()):
        self.limits = limits
        self.allow_uids = frozenset((os.getuid(), *allow_uids))
        self.allow_gids = frozenset(allow_gids)
        self.clients = 0
        self._per_uid: dict[int, int] = {}
        self._per_pid: dict[int, int] = {}   # entries leave at 0: dead pids cost nothing

    def refusal(self, peer: tuple[int, int, int]) -> tuple[int, str] | None:
        """(error code, text) to refuse `peer` (pid, uid, gid) with, or None to admit it."""
        pid, uid, gid = peer
        if uid not in self.allow_uids and gid not in self.allow_gids:
            return m.ErrorCode.DENIED, (f"uid {uid} not allowed: see allow_uids "
                                        f"(or allow_gids for its gid {gid})")
        limits = self.limits
        if self.clients >= limits.clients_max:
            return m.ErrorCode.BUSY, f"clients_max={limits.clients_max} reached"
        if self._per_uid.get(uid, 0) >= limits.clients_per_uid_max:
            return m.ErrorCode.BUSY, (f"clients_per_uid_max={limits.clients_per_uid_max} "
                                      f"reached for uid {uid}")
        if self._per_pid.get(pid, 0) >= limits.clients_per_pid_max:
            return m.ErrorCode.BUSY, (f"clients_per_pid_max={limits.clients_per_pid_max} "
                                      f"reached for pid {pid}")
        return None

    def add(self, peer: tuple[int, int, int]) -> None:
        pid, uid, _ = peer
        self.clients += 1
        self._per_uid[uid] = self._per_uid.get(uid, 0) + 1
        self._per_pid[pid] = self._per_pid.get(pid, 0) + 1
        assert self.clients <= self.limits.clients_max

    def remove(self, peer: tuple[int, int, int]) -> None:
        pid, uid, _ = peer
        self.clients -= 1
        assert self.clients >= 0
        _decrement(self._per_uid, uid)
        _decrement(self._per_pid, pid)


def _decrement(counts: dict[int, int], key: int) -> None:
    left = counts[key] - 1
    assert left >= 0
    if left:
        counts[key] = left
    else:
        del counts[key]


OUT_OF_FDS = (errno.EMFILE, errno.ENFILE)


class ReserveFd:
    """One fd held back, so that a process out of fds can still accept a peer to refuse it.

    Discussion: with no fd left, accept fails (EMFILE) and the peer would wait in the listen
    backlog until it gives up: no reply, and from its side nothing to tell a hang from a dead
    observer. Closing the reserve frees exactly one slot for the accept; the refusal is written
    and the peer closed before anything else runs (one fiber, no wait), then the reserve is
    taken again. Should another thread take the slot meanwhile, `fd` stays -1 and the next
    `take()` tries again.
    """

    def __init__(self):
        self.fd = -1
        self.take()

    def take(self) -> bool:
        if self.fd < 0:
            try:
                self.fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return False
        return True

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
