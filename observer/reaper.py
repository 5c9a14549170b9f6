"""The reaper: a tiny child that removes the socket file when the observer dies, however it dies.

Why: C9 asks that kill -9 of the observer leave nothing behind. Everything else the observer
holds goes with the process by itself: the segment's name is unlinked at start-up (only fds keep
it alive), the instance lock is an abstract socket name the kernel frees. A unix socket bound to
a path is the exception: its file stays after its owner dies. A killed process runs no code, so
someone else must remove it.

How: right after binding, the supervisor forks this child, which closes every inherited fd but
the read end of a pipe whose write end only the observer holds, ignores SIGINT and SIGTERM (a
Ctrl-C to the whole process group must not kill it before it has done its job), and blocks in
read(). When the observer exits, cleanly or by SIGKILL, the kernel closes the write end, read()
returns EOF, and the reaper unlinks the socket path if it is still the same file (device and
inode unchanged: a new observer may already have bound a new socket there), then exits. On a
clean stop the supervisor removes the socket itself, closes the pipe and reaps the child.

The child never touches Python objects it inherited (no logging, no loop, no greenlets): it
calls os functions and leaves with os._exit, which is what makes forking a process that may
already hold threads safe here.
"""

from __future__ import annotations

import os
import signal

FD_SCAN_MAX = 65536


class Reaper:
    def __init__(self, path: str):
        st = os.lstat(path)
        self.path = path
        self._identity = (st.st_dev, st.st_ino)
        read_fd, self._write_fd = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            _child(read_fd, path, self._identity)    # never returns
        os.close(read_fd)

    def stop(self) -> None:
        """Clean stop: close the pipe (the child checks the path, finds it gone or replaced,
        and exits) and reap it. Idempotent."""
        if self._write_fd >= 0:
            os.close(self._write_fd)
            self._write_fd = -1
        if self.pid > 0:
            try:
                os.waitpid(self.pid, 0)
            except ChildProcessError:
                pass
            self.pid = 0


def _child(read_fd: int, path: str, identity: tuple) -> None:
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.closerange(0, read_fd)
        os.closerange(read_fd + 1, FD_SCAN_MAX)
        while os.read(read_fd, 64):
            pass
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == identity:
            os.unlink(path)
    except BaseException:
        pass
    finally:
        os._exit(0)
