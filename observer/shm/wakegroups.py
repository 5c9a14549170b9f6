"""Wake groups: a shard's clients spread over several eventfds, so one write wakes a few.

Why. Every eventfd write makes every client that waits on that eventfd runnable at once. With
one eventfd per shard and 256 Python clients, each write put 256 readers (about 36 µs of CPU
each) on the run queues of a 2-CPU machine, about 4.6 ms of work, and the shard, woken for its
next message, waited behind them: 0.5-0.6 s of every second runnable but not running
(bench/fanout.py, the 'waiting' column). Pacing (writer.py) made such bursts rarer, not
smaller. So each shard has WAKE_GROUPS eventfds; a client's wake fd (segment.py) watches the
eventfd of one group, and a paced writer with many clients (ROTATE_CLIENTS_MIN, wake.py)
writes one group at a time, spread over the wake gap: at most WAKE_GROUP_CLIENTS clients are
woken by one write, and the shard waits behind at most one such burst (its loop's wait for a
CPU, per time it ran, at 256 readers: 0.13-0.27 ms against 1.1-2.5 ms).

How clients are placed (`WakeGroups`, the supervisor's, at hello): the first group with fewer
than WAKE_GROUP_CLIENTS clients, else the least loaded. Filling in order keeps the groups in
use few, so a writer writes as few eventfds as it can: with fewer than WAKE_GROUP_CLIENTS
clients (and no churn) they all share group 0, and a flush is one write, as before groups.

How the writers know which groups to write (the board): one word in a private memfd that the
supervisor creates with the segment and that never leaves the observer's processes, like the
eventfds. Bit g is set while group g has a client; the supervisor stores it before it hands a
new client its fds, so a writer never skips a group that has a client once that client can
wait. Group 0 is always written (the supervisor's own fan-out reader waits on it). Not in the
segment itself: it is nobody else's business, and clients' layout stays as it is.
"""

from __future__ import annotations

import mmap
import os

WAKE_GROUPS = 16  # eventfds per shard; a power of two (writer.py steps through them with a mask)
WAKE_GROUP_CLIENTS = 16  # clients a group takes before the next one is used
BOARD_BYTES = 8  # the board: one word, bit g = group g has a client
assert WAKE_GROUPS & (WAKE_GROUPS - 1) == 0 and WAKE_GROUPS <= 64


class WakeGroups:
    """Which group each new client joins, and the board word that says which are in use."""

    def __init__(self, groups_n: int = WAKE_GROUPS, group_clients: int = WAKE_GROUP_CLIENTS):
        self.counts = [0] * groups_n
        self.group_clients = group_clients

    def join(self) -> int:
        """Place one client: the first group with room, else the least loaded."""
        counts = self.counts
        for group, clients_n in enumerate(counts):
            if clients_n < self.group_clients:
                break
        else:
            group = counts.index(min(counts))
        counts[group] += 1
        return group

    def leave(self, group: int) -> None:
        assert self.counts[group] > 0, f"wake group {group} has no client to leave"
        self.counts[group] -= 1

    @property
    def mask(self) -> int:
        """The board word: bit g set while group g has a client."""
        return sum(1 << group for group, clients_n in enumerate(self.counts) if clients_n)


def board_create(name: str) -> int:
    """A new board memfd (zeroed: no group in use), for `board_map`."""
    fd = os.memfd_create(f"{name}-wakegroups", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, BOARD_BYTES)
    except BaseException:
        os.close(fd)
        raise
    return fd


def board_map(fd: int) -> mmap.mmap:
    """The board mapped read-write; `memoryview(board).cast("Q")[0]` is the word."""
    return mmap.mmap(fd, BOARD_BYTES, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
