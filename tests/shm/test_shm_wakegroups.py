"""Wake groups (observer/shm/wakegroups.py): where clients are placed, which eventfds a flush
writes, the paced rotation, and that every group hears of every record.

Real segments, real eventfds seen through wake fds as clients get them; the pacer is played
by the test (it calls flush_owed when the writer owes a wake-up), with a gap far longer than
the test, so whether a flush falls inside a slot never depends on the machine's speed."""

from __future__ import annotations

import os
import select
import time

import pytest

from obclient import connect
from obsim.observerproc import ObserverProcess
from observer.shm.wake import PACE_CLIENTS_MIN, ROTATE_CLIENTS_MIN
from observer.shm.wakegroups import WAKE_GROUP_CLIENTS, WAKE_GROUPS, WakeGroups
from obproto.layout import BookDesc
from shm_doubles import BookDouble

GAP_NS_PER_CLIENT = 10**9  # 1 s a client: every slot outlasts the test


def _book(update_id: int) -> BookDouble:
    book = BookDouble(-2, -8)
    book.set([(100, 1)], [(101, 1)], update_id, 0)
    return book


def _group_edges(seg, wakes) -> list[int]:
    """Per wake group of shard 0: 1 if it was woken since the last look, else 0."""
    return [len(ep.poll(0)) for ep in wakes]


def _clients(seg) -> list[select.epoll]:
    """One client's view of every group: an epoll (EPOLLET) on that group's wake fd."""
    wakes = []
    for group in range(WAKE_GROUPS):
        ep = select.epoll()
        ep.register(seg.wake_fd(0, group), select.EPOLLIN | select.EPOLLET)
        wakes.append(ep)
    return wakes


def _writer(make_segment, clients_n: int, groups_mask: int, *, paced: bool):
    seg = make_segment([BookDesc("x", "BTCUSD", "btcusd", 0)], ring_records=4096)
    seg.set_clients(clients_n)
    seg.set_wake_groups(groups_mask)
    writer = seg.writer(0, wake="eventfd")
    owed: list[int] = []
    if paced:
        writer.pace_wakes(GAP_NS_PER_CLIENT, owed.append)
    writer.heartbeat()
    return seg, writer, owed, _clients(seg)


def test_clients_fill_groups_in_order_and_a_leaver_makes_room_first():
    groups = WakeGroups()
    placed = [groups.join() for _ in range(2 * WAKE_GROUP_CLIENTS + 1)]
    assert placed == [0] * WAKE_GROUP_CLIENTS + [1] * WAKE_GROUP_CLIENTS + [2]
    assert groups.mask == 0b111
    groups.leave(0)
    assert groups.join() == 0  # the room in group 0 first: groups in use stay few
    for _ in range(WAKE_GROUP_CLIENTS):
        groups.leave(1)
    assert groups.mask == 0b101
    with pytest.raises(AssertionError):
        groups.leave(1)


def test_when_every_group_is_full_the_least_loaded_takes_the_next():
    groups = WakeGroups(groups_n=3, group_clients=2)
    assert [groups.join() for _ in range(6)] == [0, 0, 1, 1, 2, 2]
    groups.leave(1)
    assert groups.join() == 1  # room again
    assert groups.join() == 0  # all full: least loaded, lowest first
    assert groups.join() == 1
    assert groups.counts == [3, 3, 2]


def test_one_client_one_write_per_flush_and_no_pacing(make_segment):
    seg, writer, owed, wakes = _writer(make_segment, 1, 0b1, paced=True)
    assert writer.wake_gap_ns == 0
    for update_id in (1, 2, 3):
        writer.publish(0, _book(update_id))
        assert writer.flush()
        assert _group_edges(seg, wakes) == [1] + [0] * (WAKE_GROUPS - 1)
    assert owed == []
    assert not writer.flush()  # nothing new: no write
    assert _group_edges(seg, wakes) == [0] * WAKE_GROUPS


def test_unpaced_a_flush_writes_every_group_in_use_once(make_segment):
    seg, writer, owed, wakes = _writer(make_segment, 40, 0b10100, paced=False)
    writer.publish(0, _book(1))
    assert writer.flush()
    edges = _group_edges(seg, wakes)
    assert [g for g, e in enumerate(edges) if e] == [0, 2, 4]  # group 0 always: the
    # supervisor's own reader waits on it


def test_paced_below_the_rotation_every_group_in_use_at_once_per_gap(make_segment):
    seg, writer, owed, wakes = _writer(make_segment, ROTATE_CLIENTS_MIN - 1, 0b101, paced=True)
    for update_id in (1, 2, 3):
        writer.publish(0, _book(update_id))
        writer.flush()
    assert [g for g, e in enumerate(_group_edges(seg, wakes)) if e] == [0, 2]  # by the first
    assert len(owed) == 1  # records 2 and 3: owed, a gap after the first write
    assert writer.flush_owed(owed[-1])
    assert [g for g, e in enumerate(_group_edges(seg, wakes)) if e] == [0, 2]
    assert not writer.flush_owed(owed[-1]) and len(owed) == 1


def test_paced_groups_are_woken_in_turn_one_per_slot(make_segment):
    seg, writer, owed, wakes = _writer(make_segment, ROTATE_CLIENTS_MIN, 0b1011, paced=True)
    assert writer.wake_gap_ns == ROTATE_CLIENTS_MIN * GAP_NS_PER_CLIENT
    writer.publish(0, _book(1))
    assert writer.flush()  # the first slot is due: the first group in turn
    assert [g for g, e in enumerate(_group_edges(seg, wakes)) if e] == [0]
    assert len(owed) == 1  # groups 1 and 3 are owed a wake-up, a slot later
    slot_ns = writer.wake_gap_ns // 3
    writer.publish(0, _book(2))
    assert writer.flush()  # inside the slot, and owed already: nothing written
    assert _group_edges(seg, wakes) == [0] * WAKE_GROUPS and len(owed) == 1
    woken = []
    called_ns = time.monotonic_ns()
    while writer.flush_owed(owed[-1]):  # the pacer, at each due time
        woken += [g for g, e in enumerate(_group_edges(seg, wakes)) if e]
        if len(owed) > len(woken):  # another write owed: due a slot after this one
            assert owed[-1] >= called_ns + slot_ns
        called_ns = time.monotonic_ns()
    assert woken == [1, 3, 0]  # group 0 again: it heard of record 1, not of record 2
    assert len(owed) == 3
    assert not writer.flush()  # every group in use knows of record 2
    writer.publish(0, _book(3))
    assert writer.flush()  # inside the slot: owed, nothing written
    assert _group_edges(seg, wakes) == [0] * WAKE_GROUPS and len(owed) == 4
    woken = []
    while writer.flush_owed(owed[-1]):
        woken += [g for g, e in enumerate(_group_edges(seg, wakes)) if e]
    assert woken == [1, 3, 0]  # the turn goes on where it stopped


def test_a_flush_after_the_slot_pays_the_owed_wake_up_and_the_pacer_call_then_writes_nothing(
        make_segment):
    """The pacer can run late (a loop's timers): a flush that finds the slot over writes the
    next group itself, and the pacer's call for the old due time must not write another one
    at once (two groups back to back). Slots of 1 ms; the test waits them out (it asserts
    order, never durations)."""
    seg, writer, owed, wakes = _writer(make_segment, ROTATE_CLIENTS_MIN, 0b11, paced=False)
    writer.pace_wakes(1_000_000 // ROTATE_CLIENTS_MIN, owed.append)  # gap 1 ms
    writer.heartbeat()
    slot_ns = writer.wake_gap_ns // 2
    writer.publish(0, _book(1))
    writer.flush()  # group 0; group 1 owed
    assert [g for g, e in enumerate(_group_edges(seg, wakes)) if e] == [0] and len(owed) == 1
    writer.publish(0, _book(2))
    _wait_past(owed[0])
    writer.flush()  # the slot is over: the flush writes group 1 and owes group 0 again
    assert [g for g, e in enumerate(_group_edges(seg, wakes)) if e] == [1] and len(owed) == 2
    assert owed[1] >= owed[0] + slot_ns
    assert not writer.flush_owed(owed[0])  # the pacer, late for the old due: nothing
    assert _group_edges(seg, wakes) == [0] * WAKE_GROUPS
    _wait_past(owed[1])
    assert writer.flush_owed(owed[1])
    assert [g for g, e in enumerate(_group_edges(seg, wakes)) if e] == [0]


def _wait_past(due_ns: int) -> None:
    while time.monotonic_ns() <= due_ns:
        time.sleep(0.0005)


def test_every_group_hears_of_every_record_within_one_turn(make_segment):
    """Nothing lost per group: whatever publishes, flushes and slot ends came before, a
    record is announced to every group in use after its publish, each group once, within
    one turn of the pacer's calls."""
    mask = 0b1000_0110_0001
    in_use = [g for g in range(WAKE_GROUPS) if mask >> g & 1]
    seg, writer, owed, wakes = _writer(make_segment, ROTATE_CLIENTS_MIN, mask, paced=True)
    update_id = 0
    for burst in (1, 5, 2, 7, 1):
        for _ in range(burst):
            update_id += 1
            _group_edges(seg, wakes)  # what came before this publish
            writer.publish(0, _book(update_id))
            writer.flush()
        if burst % 2:
            writer.flush_owed(owed[-1])  # a slot ends inside the stream
    woken = [g for g, e in enumerate(_group_edges(seg, wakes)) if e]  # by the last flush
    calls = 0
    while writer.flush_owed(owed[-1]):
        calls += 1
        woken += [g for g, e in enumerate(_group_edges(seg, wakes)) if e]
    assert sorted(woken) == in_use  # each group in use once, after the last publish
    assert calls <= len(in_use)
    assert not writer.flush() and not writer.flush_owed(owed[-1])  # nothing more owed


def test_the_supervisor_places_clients_in_groups_and_reuses_room(tmp_path):
    """Through a real observer: a client's wake fd watches its group's eventfd, which
    /proc/self/fdinfo names (tfd: the eventfd's number in the observer)."""
    clients_n = WAKE_GROUP_CLIENTS + 1
    with ObserverProcess(rate=50, workdir=str(tmp_path)) as obs:
        obs.wait_ready().close()
        clients = [connect(obs.socket_path) for _ in range(clients_n)]
        try:
            targets = [_wake_target(c) for c in clients]
            assert len(set(targets[:WAKE_GROUP_CLIENTS])) == 1
            assert targets[-1] != targets[0]  # the 17th: the next group
            clients.pop(3).close()
            _await_clients(clients[0], clients_n)
            clients.append(connect(obs.socket_path))
            assert _wake_target(clients[-1]) == targets[0]  # the room in group 0 first
        finally:
            for client in clients:
                client.close()


def _wake_target(client) -> int:
    wake_fd = client._att.reader.wake_fds[0]
    with open(f"/proc/self/fdinfo/{wake_fd}") as f:
        for line in f:
            if line.startswith("tfd:"):
                return int(line.split()[1])
    raise AssertionError("the wake fd watches nothing")


def _await_clients(client, clients_n: int) -> None:
    """Until the observer has seen a client leave (no sleep-based guess)."""
    while len(client.stats().clients) >= clients_n:
        pass
