"""What a client is handed cannot write the segment or touch a shard's eventfd (C6, C8).

In one process, against a real segment: the seal refuses every new way to write it while the
writer's own mapping goes on publishing, and the wake fds of `client_fds()` survive everything
a client can do to them with the shard's eventfd unharmed. The same attacks through a real
observer, from other processes and uids, are in tests/server/test_server_isolation.py.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
import select

import pytest

from obproto.segment import SegmentReader
from observer.shm.segment import F_ADD_SEALS, F_SEAL_FUTURE_WRITE, SEALS, Segment
from obproto import layout
from shm_doubles import BookDouble

_libc = ctypes.CDLL(None, use_errno=True)
FALLOC_FL_KEEP_SIZE = 1
FALLOC_FL_PUNCH_HOLE = 2
SATURATED = 2**64 - 2


def _fallocate_punch(fd: int, length: int) -> None:
    if _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, ctypes.c_long(0),
                       ctypes.c_long(length)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _descs_bytes(segment) -> bytes:
    g = segment.geometry
    return bytes(segment.map[g.descs_offset:g.stats_offset])


def test_reader_fd_is_refused_before_the_seal(make_segment):
    segment = make_segment(sealed=False)
    with pytest.raises(ValueError, match="before seal"):
        segment.reader_fd()
    segment.seal()
    fd = segment.reader_fd()
    try:
        assert fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY
    finally:
        os.close(fd)


def test_sealed_segment_refuses_every_new_writer_and_keeps_the_old_one(make_segment):
    segment = make_segment()
    size = os.fstat(segment.fd).st_size
    g = segment.geometry
    before = _descs_bytes(segment)
    refused = {
        "mmap PROT_WRITE": lambda: mmap.mmap(segment.fd, size, mmap.MAP_SHARED,
                                             mmap.PROT_READ | mmap.PROT_WRITE),
        "pwrite": lambda: os.pwrite(segment.fd, b"\xff" * 8, g.descs_offset),
        "ftruncate": lambda: os.ftruncate(segment.fd, 0),
        "grow": lambda: os.ftruncate(segment.fd, size * 2),
        "fallocate punch-hole": lambda: _fallocate_punch(segment.fd, size),
        "add a seal": lambda: fcntl.fcntl(segment.fd, F_ADD_SEALS, F_SEAL_FUTURE_WRITE),
        "attach_fd": lambda: Segment.attach_fd(segment.fd, segment.all_eventfds, segment.board_fd),
    }
    for what, attempt in refused.items():
        with pytest.raises(PermissionError):
            attempt()
            pytest.fail(f"{what} was allowed")
    assert fcntl.fcntl(segment.fd, fcntl.F_GET_SEALS) & SEALS == SEALS
    assert os.fstat(segment.fd).st_size == size
    assert _descs_bytes(segment) == before
    book = BookDouble()
    book.set([(100, 1)], [(101, 2)], 9)
    assert segment.writer(0).publish(0, book) == 1   # the mapping made before the seal writes
    with SegmentReader(segment.reader_fd(), own_fds=True) as reader:
        assert reader.snapshot(0).update_id == 9


def test_a_writable_reopen_of_the_client_fd_writes_nothing(make_segment):
    """The path that wrote every client's segment before: reopen /proc/self/fd/N O_RDWR. The
    mode (0o400) refuses it to anyone but root; for root, the seals refuse every write."""
    segment = make_segment()
    size = os.fstat(segment.fd).st_size
    before = _descs_bytes(segment)
    client_fd = segment.reader_fd()
    try:
        _mprotect_writable_refused(client_fd, size)
        try:
            rw_fd = os.open(f"/proc/self/fd/{client_fd}", os.O_RDWR)
        except PermissionError:
            assert os.geteuid() != 0
            return
        try:
            with pytest.raises(PermissionError):
                mmap.mmap(rw_fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            with pytest.raises(PermissionError):
                os.pwrite(rw_fd, b"\xff" * 8, segment.geometry.descs_offset)
            with pytest.raises(PermissionError):
                os.ftruncate(rw_fd, 0)
            _mprotect_writable_refused(rw_fd, size)
        finally:
            os.close(rw_fd)
    finally:
        os.close(client_fd)
    assert _descs_bytes(segment) == before


def _mprotect_writable_refused(fd: int, size: int) -> None:
    """Map `fd` read-only (libc's mmap, for the address) and ask mprotect for PROT_WRITE."""
    _libc.mmap.restype = ctypes.c_void_p
    _libc.mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                           ctypes.c_int, ctypes.c_long)
    address = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
    assert address not in (None, ctypes.c_void_p(-1).value)
    try:
        result = _libc.mprotect(ctypes.c_void_p(address), ctypes.c_size_t(size),
                                mmap.PROT_READ | mmap.PROT_WRITE)
        assert (result, ctypes.get_errno()) == (-1, errno.EACCES)
    finally:
        _libc.munmap(ctypes.c_void_p(address), ctypes.c_size_t(size))


def test_wake_fds_survive_every_client_action_and_the_eventfd_is_untouched(make_segment):
    segment = make_segment(shards_n=2, book_descs=None)
    efd = segment.eventfds[0]
    writer = segment.writer(0)
    hostile = segment.client_fds()
    victim = segment.client_fds()
    own = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        with SegmentReader(victim[0], victim[1:], own_fds=True) as reader:
            for wake_fd in hostile[1:]:
                _attack(wake_fd, own)
            assert fcntl.fcntl(efd, fcntl.F_GETFL) & os.O_NONBLOCK   # the shard never blocks
            os.eventfd_write(efd, 1)                                   # nor fails (EAGAIN)
            book = BookDouble()
            for i in range(1, 6):
                reader.wait(0)                                         # quiet again
                book.set([(100 + i, 1)], [(200, 1)], i)
                writer.publish(0, book)
                assert writer.flush()
                events = reader.wait(30.0)
                assert [fd for fd, _ in events] == [victim[1]], i     # its edge, by event
    finally:
        os.close(own)
        for fd in hostile:
            os.close(fd)


def _attack(wake_fd: int, own_eventfd: int) -> None:
    """Everything a client can do to a wake fd; each must fail or stay its own business."""
    with pytest.raises(OSError) as info:
        os.eventfd_write(wake_fd, SATURATED)
    assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError) as info:
        os.read(wake_fd, 8)
    assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError) as info:
        os.open(f"/proc/self/fd/{wake_fd}", os.O_RDWR)
    assert info.value.errno in (errno.ENXIO, errno.EACCES)
    flags = fcntl.fcntl(wake_fd, fcntl.F_GETFL)
    fcntl.fcntl(wake_fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
    inner = select.epoll.fromfd(os.dup(wake_fd))
    try:
        inner.poll(0)                                  # level-triggered: consumes nothing
        inner.register(own_eventfd, select.EPOLLIN)    # its own fd inside: wakes only itself
        for _ in range(100):
            os.eventfd_write(own_eventfd, 1)
        inner.poll(0)
    finally:
        inner.close()


def test_client_fds_are_new_each_time_and_the_eventfds_are_not_among_them(make_segment):
    segment = make_segment(shards_n=2, book_descs=None)
    first, second = segment.client_fds(), segment.client_fds()
    try:
        assert len(first) == 1 + layout.plan_geometry(1, 2, 8, 64).shards_n
        assert not set(first) & set(second)
        assert not set(first) & set(segment.eventfds)
        for wake_fd in first[1:]:
            assert os.readlink(f"/proc/self/fd/{wake_fd}") == "anon_inode:[eventpoll]"
        assert os.readlink(f"/proc/self/fd/{first[0]}").startswith("/memfd:")
    finally:
        for fd in (*first, *second):
            os.close(fd)
