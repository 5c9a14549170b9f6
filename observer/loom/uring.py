"""The io_uring rings from Python: `io_uring_setup`, three `mmap`s, `struct` and one syscall.

Why ctypes + mmap rather than the PyPI `liburing` package: we need reads into any writable
buffer at any offset (a `memoryview` slice of a preallocated bytearray) and sends of read-only
views, and that package only reads into whole bytearrays and marks its socket helpers as
untested; here the rings are plain shared memory that `struct.pack_into` writes and
`struct.unpack_from` reads, and the only foreign call per loop pass is one `io_uring_enter`.
bench/uring_binding.py compares the two on this machine.

Memory ordering: the kernel publishes CQ tails and reads SQ tails with acquire/release; from
Python we write an SQE and then store the tail, and read the CQ tail and then the CQEs. That
relies on x86-64 keeping stores in order with stores and loads with loads (TSO). On another
architecture this module would need real barriers; the backend refuses to start there.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import platform
import struct

SYS_IO_URING_SETUP = 425
SYS_IO_URING_ENTER = 426
OFF_SQ_RING = 0
OFF_SQES = 0x10000000
FEAT_SINGLE_MMAP = 1 << 0
FEAT_EXT_ARG = 1 << 8
SETUP_CQSIZE = 1 << 3
SETUP_CLAMP = 1 << 4
SETUP_SUBMIT_ALL = 1 << 7
ENTER_GETEVENTS = 1 << 0
ENTER_EXT_ARG = 1 << 3

# Opcodes (include/uapi/linux/io_uring.h).
OP_NOP = 0
OP_POLL_ADD = 6
OP_ACCEPT = 13
OP_ASYNC_CANCEL = 14
OP_READ = 22
OP_WRITE = 23
OP_SEND = 26
OP_RECV = 27

SQE = struct.Struct("<BBHiQQIIQHHiQQ")      # 64 bytes: the whole entry
SQE_HEAD = struct.Struct("<BBHiQQIIQ")       # the first 40 bytes: all loom ever sets; the
CQE = struct.Struct("<QiI")                  # rest stays as zeroed at setup
assert SQE.size == 64
assert SQE_HEAD.size == 40
assert CQE.size == 16


class _SqOffsets(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint32) for name in (
        "head", "tail", "ring_mask", "ring_entries", "flags", "dropped", "array", "resv1")] + [
        ("user_addr", ctypes.c_uint64)]


class _CqOffsets(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint32) for name in (
        "head", "tail", "ring_mask", "ring_entries", "overflow", "cqes", "flags", "resv1")] + [
        ("user_addr", ctypes.c_uint64)]


class _Params(ctypes.Structure):
    _fields_ = [("sq_entries", ctypes.c_uint32), ("cq_entries", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("sq_thread_cpu", ctypes.c_uint32),
                ("sq_thread_idle", ctypes.c_uint32), ("features", ctypes.c_uint32),
                ("wq_fd", ctypes.c_uint32), ("resv", ctypes.c_uint32 * 3),
                ("sq_off", _SqOffsets), ("cq_off", _CqOffsets)]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_int64)]


class _GeteventsArg(ctypes.Structure):
    _fields_ = [("sigmask", ctypes.c_uint64), ("sigmask_sz", ctypes.c_uint32),
                ("min_wait_usec", ctypes.c_uint32), ("ts", ctypes.c_uint64)]


class PyBuffer(ctypes.Structure):
    """CPython's Py_buffer: how we learn the address of any buffer object, slices included."""
    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int),
                ("ndim", ctypes.c_int), ("format", ctypes.c_char_p),
                ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]


assert ctypes.sizeof(_Params) == 120
assert ctypes.sizeof(_GeteventsArg) == 24

_libc = ctypes.CDLL(None, use_errno=True)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
get_buffer = ctypes.pythonapi.PyObject_GetBuffer
get_buffer.argtypes = [ctypes.py_object, ctypes.POINTER(PyBuffer), ctypes.c_int]
get_buffer.restype = ctypes.c_int
release_buffer = ctypes.pythonapi.PyBuffer_Release
release_buffer.argtypes = [ctypes.POINTER(PyBuffer)]
release_buffer.restype = None
PYBUF_SIMPLE = 0
PYBUF_WRITABLE = 1


class RingRefused(OSError):
    """io_uring cannot be set up here (seccomp, sysctl, memlock, old kernel, not x86-64)."""


class Ring:
    """One io_uring instance: SQ and CQ rings and the SQE array, mapped into this process."""

    def __init__(self, sq_entries: int, cq_entries: int):
        if platform.machine() not in ("x86_64", "AMD64"):
            raise RingRefused(errno.ENOTSUP, "ring access relies on x86-64 store ordering")
        params = _Params()
        params.flags = SETUP_CQSIZE | SETUP_CLAMP | SETUP_SUBMIT_ALL
        params.cq_entries = cq_entries
        fd = _syscall(SYS_IO_URING_SETUP, ctypes.c_uint32(sq_entries), ctypes.byref(params))
        if fd < 0:
            err = ctypes.get_errno()
            raise RingRefused(err, f"io_uring_setup: {os.strerror(err)}")
        self.fd = fd
        try:
            self._map(params)
        except BaseException:
            os.close(fd)
            raise

    def _map(self, params: _Params) -> None:
        if not params.features & FEAT_SINGLE_MMAP or not params.features & FEAT_EXT_ARG:
            raise RingRefused(errno.ENOTSUP, "kernel lacks IORING_FEAT_SINGLE_MMAP/EXT_ARG")
        self.features = params.features
        self.sq_entries = params.sq_entries
        self.cq_entries = params.cq_entries
        sq, cq = params.sq_off, params.cq_off
        ring_bytes = max(sq.array + params.sq_entries * 4, cq.cqes + params.cq_entries * 16)
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        flags = mmap.MAP_SHARED | mmap.MAP_POPULATE
        self._ring_map = mmap.mmap(self.fd, ring_bytes, flags, prot, offset=OFF_SQ_RING)
        self._sqe_map = mmap.mmap(self.fd, params.sq_entries * 64, flags, prot, offset=OFF_SQES)
        words = memoryview(self._ring_map).cast("I")
        self._words = words
        self.sq_head_i = sq.head // 4
        self.sq_tail_i = sq.tail // 4
        self.sq_mask = words[sq.ring_mask // 4]
        self.cq_head_i = cq.head // 4
        self.cq_tail_i = cq.tail // 4
        self.cq_mask = words[cq.ring_mask // 4]
        self.cqes_off = cq.cqes
        for i in range(params.sq_entries):           # identity SQ index array, set once
            words[sq.array // 4 + i] = i
        self.sqes = self._sqe_map
        self.ring = self._ring_map
        self.sq_tail = words[self.sq_tail_i]
        self._ts = _Timespec()
        self._arg = _GeteventsArg()
        self._arg.ts = ctypes.addressof(self._ts)
        self._arg_addr = ctypes.addressof(self._arg)
        self._arg_bytes = ctypes.sizeof(self._arg)
        self._c_nr = ctypes.c_long(SYS_IO_URING_ENTER)
        self._c_fd = ctypes.c_int(self.fd)
        self._c_counts = [ctypes.c_uint32(i) for i in range(self.sq_entries + 1)]
        self._c_flags = {f: ctypes.c_uint32(f) for f in (
            0, ENTER_GETEVENTS, ENTER_GETEVENTS | ENTER_EXT_ARG)}
        self._c_arg = ctypes.c_void_p(self._arg_addr)
        self._c_null = ctypes.c_void_p(None)
        self._c_sizes = {0: ctypes.c_size_t(0), self._arg_bytes: ctypes.c_size_t(self._arg_bytes)}

    def sq_space(self) -> int:
        return self.sq_entries - (self.sq_tail - self._words[self.sq_head_i]) % (1 << 32)

    def push(self, opcode, fd, off, addr, length, op_flags, user_data, sqe_flags=0) -> None:
        """Write one SQE and publish it (the kernel takes it at the next enter)."""
        tail = self.sq_tail
        SQE_HEAD.pack_into(self.sqes, (tail & self.sq_mask) * 64, opcode, sqe_flags, 0, fd, off,
                           addr, length, op_flags, user_data)
        self.sq_tail = tail = (tail + 1) & 0xFFFFFFFF
        self._words[self.sq_tail_i] = tail

    def fill_all(self, opcode, fd, off, addr, length, op_flags, user_data, sqe_flags=0) -> None:
        """Write the same SQE into every slot, for a ring that only ever submits that one
        (`submit_next`): the kernel reads a slot when it is submitted, never changes it."""
        for i in range(self.sq_entries):
            SQE_HEAD.pack_into(self.sqes, i * 64, opcode, sqe_flags, 0, fd, off, addr, length,
                               op_flags, user_data)

    def submit_next(self) -> int:
        """Submit the next slot as `fill_all` left it: a tail store and one enter. Returns the
        enter's result (1, or -1 with ctypes' errno set)."""
        tail = self.sq_tail = (self.sq_tail + 1) & 0xFFFFFFFF
        self._words[self.sq_tail_i] = tail
        return _syscall(self._c_nr, self._c_fd, self._c_counts[1], self._c_counts[0],
                        self._c_flags[0], self._c_null, self._c_sizes[0])

    def enter(self, to_submit: int, wait: bool, timeout_s: float | None) -> int:
        """Submit `to_submit` entries and, if `wait`, wait for one completion or the timeout."""
        flags = 0
        arg = None
        arg_bytes = 0
        if wait:
            flags = ENTER_GETEVENTS
            if timeout_s is not None:
                whole_s = int(timeout_s)
                self._ts.tv_sec = whole_s
                self._ts.tv_nsec = int((timeout_s - whole_s) * 1e9)
                flags |= ENTER_EXT_ARG
                arg = self._arg_addr
                arg_bytes = self._arg_bytes
        # Discussion: every argument is a ctypes object made once at setup; converting plain
        # ints on each call costs more than the syscall (0.8 vs 1.2 µs per call measured).
        n = _syscall(self._c_nr, self._c_fd, self._c_counts[to_submit],
                     self._c_counts[1 if wait else 0], self._c_flags[flags],
                     self._c_arg if arg else self._c_null, self._c_sizes[arg_bytes])
        if n < 0:
            err = ctypes.get_errno()
            if err in (errno.ETIME, errno.EINTR, errno.EAGAIN, errno.EBUSY):
                return 0
            raise OSError(err, f"io_uring_enter: {os.strerror(err)}")
        return n

    def completions_waiting(self) -> bool:
        return self._words[self.cq_head_i] != self._words[self.cq_tail_i]

    def reap(self, handle) -> int:
        """Call `handle(user_data, res)` for every CQE posted; returns how many."""
        words = self._words
        head = words[self.cq_head_i]
        tail = words[self.cq_tail_i]
        count = 0
        ring, mask, base = self.ring, self.cq_mask, self.cqes_off
        while head != tail:
            user_data, res, _ = CQE.unpack_from(ring, base + (head & mask) * 16)
            head = (head + 1) & 0xFFFFFFFF
            words[self.cq_head_i] = head            # free the slot before the handler runs
            count += 1
            handle(user_data, res)
            tail = words[self.cq_tail_i]
        return count

    def close(self) -> None:
        self._words.release()
        self._ring_map.close()
        self._sqe_map.close()
        os.close(self.fd)
