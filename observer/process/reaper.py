"""The reaper: a tiny child that removes the socket file when the observer dies, however it dies.

Why: C9 asks that kill -9 of the observer leave nothing behind. Everything else the observer
holds goes with the process by itself: the segment is a memfd with no name (only fds and
mappings keep it alive), the instance lock is an abstract socket name the kernel frees. A unix
socket bound to a path is the exception: its file stays after its owner dies. A killed process
runs no code, so someone else must remove it.

How: the supervisor forks this child BEFORE it binds, so that no instant exists at which the
socket file exists and nobody would remove it (forking after bind left one: a kill -9 between
bind and fork leaked the file). The child closes every inherited fd but the read end of a pipe
whose write end only the observer holds, ignores SIGINT and SIGTERM (a Ctrl-C to the whole
process group must not kill it before it has done its job), and reads the pipe until EOF. Right
after binding, the supervisor writes the socket file's identity (device, inode) into the pipe
(`watch()`). When the observer exits, cleanly or by SIGKILL, the kernel closes the write end and
read() returns EOF. Then:

- with an identity: the reaper unlinks the path if it is still that file (a new observer may
  already have bound a new socket there), as the only safe test of "ours";
- without one (the observer died between bind and `watch()`, or during bind): it unlinks the
  path only if it is a socket that nobody listens on (connect is refused). A file that is not a
  socket was never ours; a socket someone serves belongs to a live server. The one case it
  cannot tell apart is another observer sharing our socket path that binds in the moment
  between its own bind and listen, right as we die: it needs our instance lock (same name) or
  a second configuration pointing at our path, and it starts far slower than the reaper acts.

On a clean stop the supervisor removes the socket itself, closes the pipe and reaps the child,
which finds the path gone or replaced and exits.

The child never touches Python objects it inherited (no logging, no loop, no greenlets): it
calls os and socket functions and leaves with os._exit, which is what makes forking a process
that may already hold threads safe here. It is forked before the segment exists, so it never
holds a mapping of it, and it inherits the supervisor's non-dumpable flag.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import struct

from observer import loom

FD_SCAN_MAX = 65536
_IDENTITY = struct.Struct("<QQ")      # st_dev, st_ino of the bound socket file


class Reaper:
    def __init__(self, path: str):
        self.path = path
        read_fd, self._write_fd = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            _child(read_fd, path)             # never returns
        os.close(read_fd)

    def watch(self) -> None:
        """Tell the child which file at `path` is ours: call right after binding it."""
        st = os.lstat(self.path)
        data = _IDENTITY.pack(st.st_dev, st.st_ino)
        assert os.write(self._write_fd, data) == len(data)    # a pipe takes 16 bytes at once

    def stop(self) -> None:
        """Clean stop: close the pipe (the child checks the path, finds it gone or replaced,
        and exits) and reap it. Idempotent."""
        if self._write_fd >= 0:
            os.close(self._write_fd)
            self._write_fd = -1
        if self.pid > 0:
            try:
                _reap(self.pid)
            except ChildProcessError:
                pass
            self.pid = 0


def _reap(pid: int) -> None:
    """Wait for the child. From a fiber (the clean stop runs in one), on the loop's thread pool:
    on a busy machine the child may wait a while for a CPU, and a blocking waitpid stopped the
    loop meanwhile (the watchdog reported the stopping fiber stalled)."""
    try:
        loom.current_fiber()
    except loom.LoomError:
        os.waitpid(pid, 0)                # plain code: no loop to keep running
        return
    loom.run_in_thread(os.waitpid, pid, 0)


def _child(read_fd: int, path: str) -> None:
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.closerange(0, read_fd)
        os.closerange(read_fd + 1, FD_SCAN_MAX)
        received = b""
        while chunk := os.read(read_fd, 64):
            received += chunk
        if len(received) == _IDENTITY.size:
            _unlink_if_same(path, _IDENTITY.unpack(received))
        else:
            _unlink_if_unserved(path)
    except BaseException:
        pass
    finally:
        os._exit(0)


def _unlink_if_same(path: str, identity: tuple) -> None:
    st = os.lstat(path)
    if (st.st_dev, st.st_ino) == identity:
        os.unlink(path)


def _unlink_if_unserved(path: str) -> None:
    if not stat.S_ISSOCK(os.lstat(path).st_mode):
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
    finally:
        probe.close()
