"""Which io_uring binding should loom use: our ctypes + mmap rings, or the PyPI `liburing`?

Two operations, per operation, side by side in one run (best of `--repeat`, CPU µs/op):
  read1   read 8 bytes from an eventfd that has data: one SQE, one enter, one CQE
          (what loom's io_uring backend does when a wait reaches the ring)
  nop32   32 NOPs per enter (what batching buys)
and, for reference, the same read through epoll readiness + os.read-style FileIO.readinto.
`liburing` is optional (it is not a project dependency); without it its lines are skipped.

    python bench/uring_binding.py [--ops 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import io
import os
import select
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from observer.loom import uring as ur  # noqa: E402

BATCH = 32


def best_us(fn, ops: int, repeat: int) -> float:
    fn(ops // 10)                                   # warm-up
    best = float("inf")
    for _ in range(repeat):
        t0 = time.process_time()
        fn(ops)
        best = min(best, (time.process_time() - t0) / ops * 1e6)
    return best


def ctypes_read1(efd: int):
    ring = ur.Ring(256, 512)
    buf = bytearray(8)
    view = ur.PyBuffer()
    ur.get_buffer(buf, view, ur.PYBUF_WRITABLE)
    addr = view.buf
    results = []

    def handle(user_data, res):
        results.append(res)

    def run(ops):
        for _ in range(ops):
            os.eventfd_write(efd, 1)
            ring.push(ur.OP_READ, efd, 0xFFFFFFFFFFFFFFFF, addr, 8, 0, 1)
            ring.enter(1, True, None)
            ring.reap(handle)
        assert results[-1] == 8
        results.clear()

    return run, lambda: (ur.release_buffer(view), ring.close())


def ctypes_nop32():
    ring = ur.Ring(256, 512)
    count = [0]

    def handle(user_data, res):
        count[0] += 1

    def run(ops):
        for _ in range(ops // BATCH):
            for i in range(BATCH):
                ring.push(ur.OP_NOP, -1, 0, 0, 0, 0, i + 1)
            ring.enter(BATCH, True, None)
            while count[0] < BATCH:
                ring.reap(handle)
            count[0] = 0

    return run, ring.close


def liburing_read1(lib, efd: int):
    ring = lib.Ring()
    lib.io_uring_queue_init(256, ring)
    cqe = lib.Cqe()
    buf = bytearray(8)

    def run(ops):
        for _ in range(ops):
            os.eventfd_write(efd, 1)
            sqe = lib.io_uring_get_sqe(ring)
            lib.io_uring_prep_read(sqe, efd, buf)
            lib.io_uring_sqe_set_data64(sqe, 1)
            lib.io_uring_submit_and_wait(ring, 1)
            lib.io_uring_wait_cqe(ring, cqe)
            assert cqe[0].res == 8
            lib.io_uring_cq_advance(ring, 1)

    return run, lambda: lib.io_uring_queue_exit(ring)


def liburing_nop32(lib):
    ring = lib.Ring()
    lib.io_uring_queue_init(256, ring)
    cqe = lib.Cqe()

    def run(ops):
        for _ in range(ops // BATCH):
            for i in range(BATCH):
                sqe = lib.io_uring_get_sqe(ring)
                lib.io_uring_prep_nop(sqe)
                lib.io_uring_sqe_set_data64(sqe, i + 1)
            lib.io_uring_submit_and_wait(ring, BATCH)
            lib.io_uring_wait_cqe_nr(ring, cqe, BATCH)
            lib.io_uring_cq_advance(ring, BATCH)

    return run, lambda: lib.io_uring_queue_exit(ring)


def epoll_read1(efd: int):
    ep = select.epoll()
    ep.register(efd, select.EPOLLIN | select.EPOLLET)
    file = io.FileIO(efd, "r+", closefd=False)
    buf = bytearray(8)

    def run(ops):
        for _ in range(ops):
            os.eventfd_write(efd, 1)
            ep.poll(-1, 16)
            assert file.readinto(buf) == 8

    return run, ep.close


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    try:
        import liburing as lib
    except ImportError:
        lib = None
    efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
    cases = [("read1", "ctypes+mmap", lambda: ctypes_read1(efd)),
             ("read1", "epoll (reference)", lambda: epoll_read1(efd)),
             ("nop32", "ctypes+mmap", ctypes_nop32)]
    if lib is not None:
        cases += [("read1", "liburing", lambda: liburing_read1(lib, efd)),
                  ("nop32", "liburing", lambda: liburing_nop32(lib))]
    else:
        print("# liburing not installed: its lines are skipped (pip install liburing)")
    for workload in ("read1", "nop32"):
        for name, make in [(n, m) for w, n, m in cases if w == workload]:
            run, close = make()
            try:
                us = best_us(run, args.ops, args.repeat)
            finally:
                close()
            print(f"{workload:6s} {name:18s} {us:7.2f} cpu us/op")
    os.close(efd)


if __name__ == "__main__":
    main()
