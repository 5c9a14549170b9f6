"""One observer per name: a lock that dies with its process and leaves no file behind.

Why an abstract unix socket and not a lock file: C9 asks that kill -9 leave nothing that a later
start trips over or that accumulates. A lock file survives its owner (flock releases, the file
stays); a name in Linux's abstract socket namespace (a leading NUL byte) exists exactly as long
as some process holds the bound socket, and the kernel frees it when that process dies, however
it dies. Binding it is the test-and-set: EADDRINUSE means another live observer holds the name.

The name includes the uid, so two users may each run an observer called `main` (their sockets
and segments are separate too). Abstract names are per network namespace: observers in
different containers do not see each other, which is what isolation means there.
"""

from __future__ import annotations

import errno
import os
import socket


class AlreadyRunning(RuntimeError):
    """Another live observer holds this name."""


class InstanceLock:
    def __init__(self, name: str):
        assert name
        self.name = name
        self.address = f"\0observer-instance.{os.getuid()}.{name}"
        self._sock: socket.socket | None = None

    def acquire(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(self.address)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE:
                raise AlreadyRunning(f"an observer named {self.name!r} is already running "
                                     f"(use --name to run another)") from None
            raise
        self._sock = sock

    def release(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    @property
    def held(self) -> bool:
        return self._sock is not None
