"""asyncio against a real observer: records arrive, the loop sleeps between them (wake-ups are
counted per record, by the loop's own selector), restarts are survived, idle time ends it."""

import asyncio
import selectors

import pytest

import obclient
from kit.procs import ObserverProcess, unique_name

WAIT_S = 30.0
PATIENT_S = 30.0          # no reattach because this busy machine starved the observer a second
RECORDS = 150
RATE_HZ = 50.0            # a modest feed: the loop must sleep between records


class CountingSelector(selectors.EpollSelector):
    """The loop's selector, counting how often it returned the client's fd ready: that is how
    often the loop woke for it and ran its reader callback."""

    def __init__(self):
        super().__init__()
        self.watched_fd = -1
        self.ready_on_fd = 0
        self.selects = 0

    def select(self, timeout=None):
        ready = super().select(timeout)
        self.selects += 1
        self.ready_on_fd += sum(1 for key, _ in ready if key.fd == self.watched_fd)
        return ready


def run_counted(client, main):
    selector = CountingSelector()
    selector.watched_fd = client.fileno()
    loop = asyncio.SelectorEventLoop(selector)
    try:
        return loop.run_until_complete(asyncio.wait_for(main(), WAIT_S * 4)), selector
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


@pytest.fixture(scope="module")
def observer():
    with ObserverProcess(rate=RATE_HZ) as obs:
        obs.wait_ready().close()
        yield obs


def test_aupdates_sleep_between_records(observer):
    async def main():
        got = []
        async for update in client.aupdates(None, idle_timeout_s=WAIT_S):
            got.append(update)
            if len(got) == RECORDS:
                break
        return got

    with obclient.connect(observer.socket_path, stale_after_s=PATIENT_S) as client:
        got, selector = run_counted(client, main)
        assert client._aio_waker is None                   # the reader left with the iterator
    assert len(got) == RECORDS
    assert {u.name for u in got} == {"synthetic:BTCUSD", "synthetic:ETHUSD"}
    assert all(u.kind == obclient.KIND_UPDATE for u in got)
    for name in ("synthetic:BTCUSD", "synthetic:ETHUSD"):
        seqs = [u.book_seq for u in got if u.name == name]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))    # none skipped
    per_record = selector.ready_on_fd / len(got)
    print(f"aupdates: {selector.ready_on_fd} wake-ups, {selector.selects} loop turns for "
          f"{len(got)} records ({per_record:.2f} wake-ups per record)")
    assert 0 < selector.ready_on_fd < 2 * len(got)


def test_the_fileno_pattern_sleeps_too(observer):
    """What CLIENT.md shows for an event loop of one's own: take the wake-ups, then poll."""
    async def main():
        loop = asyncio.get_running_loop()
        stream = client.stream(None)
        got = stream.poll()                                # the cursor starts at the ring heads
        woke = asyncio.Event()
        callbacks = 0

        def on_readable():
            nonlocal callbacks
            callbacks += 1
            client.take_wakeups()
            woke.set()

        loop.add_reader(client.fileno(), on_readable)
        try:
            while len(got) < RECORDS:
                await asyncio.wait_for(woke.wait(), WAIT_S)
                woke.clear()
                got.extend(stream.poll())
        finally:
            loop.remove_reader(client.fileno())
        return got, callbacks

    with obclient.connect(observer.socket_path, stale_after_s=PATIENT_S) as client:
        (got, callbacks), selector = run_counted(client, main)
    assert len(got) >= RECORDS
    print(f"fileno pattern: {callbacks} callbacks for {len(got)} records")
    assert callbacks == selector.ready_on_fd
    assert 0 < callbacks < 2 * len(got)


def test_two_iterators_share_the_one_reader(observer):
    async def take(names, n):
        got = []
        async for update in client.aupdates(names, idle_timeout_s=WAIT_S):
            got.append(update)
            if len(got) == n:
                return got

    async def main():
        return await asyncio.gather(take(["BTCUSD"], 20), take(["synthetic:ETHUSD"], 20))

    with obclient.connect(observer.socket_path, stale_after_s=PATIENT_S) as client:
        (btc, eth), _ = run_counted(client, main)
        assert client._aio_waker is None
    assert {u.name for u in btc} == {"synthetic:BTCUSD"} and len(btc) == 20
    assert {u.name for u in eth} == {"synthetic:ETHUSD"} and len(eth) == 20


def test_aupdates_end_after_the_idle_timeout(tmp_path):
    with ObserverProcess(rate=0.001, workdir=str(tmp_path)) as quiet:
        quiet.wait_ready().close()
        with obclient.connect(quiet.socket_path) as client:
            async def main():
                return [u async for u in client.aupdates(["BTCUSD"], idle_timeout_s=0.3)]

            got, _ = run_counted(client, main)
    assert got == []


def test_an_unknown_name_fails_the_iteration_at_once(observer):
    async def main():
        async for _ in client.aupdates(["DOGEUSD"]):
            pass

    with obclient.connect(observer.socket_path) as client:
        with pytest.raises(obclient.BookNotFound, match="unknown book 'DOGEUSD'"):
            run_counted(client, main)
        assert client._aio_waker is None


def test_aupdates_survive_kill_9_stale_then_resync(tmp_path):
    with ObserverProcess(name=unique_name("a"), workdir=str(tmp_path), rate=RATE_HZ) as obs:
        obs.wait_ready().close()
        client = obclient.connect(obs.socket_path, stale_after_s=PATIENT_S)

        async def main():
            kinds = []
            async for update in client.aupdates(["BTCUSD"], idle_timeout_s=WAIT_S * 2):
                assert update.name == "synthetic:BTCUSD"
                if not kinds or kinds[-1] != update.kind:
                    kinds.append(update.kind)
                if kinds == [obclient.KIND_UPDATE]:
                    obs.kill()                              # the loop must notice the hang-up
                elif kinds == [obclient.KIND_UPDATE, obclient.KIND_STALE]:
                    assert update.stale and not client.attached
                    obs.start()                             # a new observer, same socket
                elif len(kinds) == 4:
                    return kinds

        try:
            kinds, _ = run_counted(client, main)
        finally:
            client.close()
    assert kinds == [obclient.KIND_UPDATE, obclient.KIND_STALE, obclient.KIND_RESYNC,
                     obclient.KIND_UPDATE]
