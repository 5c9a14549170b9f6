"""loom.cancel_and_join: stop other fibers and tell their Cancelled from the caller's own.

A stopper cancels its targets and waits for them; the targets' Cancelled is the expected end
(swallowed), a target's other error is reported and never raised into the stopper, a target
that outlives the deadline is reported late, and a cancel (or another timeout) aimed at the
stopper itself is raised, after the join, never swallowed.
"""

from __future__ import annotations

import logging

import pytest

from observer import loom

pytestmark = pytest.mark.timeout(30)


def sleeper():
    loom.sleep(60)


def slow_to_stop(cleaning, release, ended):
    """A target whose cleanup after its cancel waits for `release` (a socket flush, say)."""
    try:
        loom.sleep(60)
    except loom.Cancelled:
        cleaning.post()
        release.wait()
        ended.append("target")
        raise


def test_the_targets_cancelled_is_expected_and_never_escapes(loop):
    def main():
        targets = [loop.spawn(sleeper, name=f"sleeper{i}") for i in range(3)]
        loom.sleep(0)                                   # all three are asleep now
        report = loom.cancel_and_join(targets, timeout_s=10.0)
        assert report == loom.JoinReport(late=(), failed=())
        assert all(target.done for target in targets)
        assert all(isinstance(target.error, loom.Cancelled) for target in targets)
        loom.sleep(0)                                   # no Cancelled left for the stopper
        return "carried on"

    assert loop.run(main) == "carried on"


def test_a_stopper_cancelled_while_joining_gets_its_cancel_once_the_targets_are_done(loop):
    cleaning, release, ended = loom.Event(), loom.Event(), []

    def stopper(target):
        try:
            loom.cancel_and_join([target], timeout_s=None)
        finally:
            ended.append("stopper")
        return "not cancelled"

    def main():
        target = loop.spawn(slow_to_stop, cleaning, release, ended, name="target")
        loom.sleep(0)
        stopping = loop.spawn(stopper, target, name="stopper")
        cleaning.wait()                                 # the stopper waits in the join now
        stopping.cancel()
        for _ in range(3):
            loom.sleep(0)
        assert not stopping.done                        # its cancel did not cut the join short
        release.post()
        with pytest.raises(loom.Cancelled, match="'stopper'") as info:
            stopping.join()                             # its own cancel, not the target's
        assert info.value is stopping.error
        assert isinstance(target.error, loom.Cancelled)
        assert "'target'" in str(target.error)

    loop.run(main)
    assert ended == ["target", "stopper"]


def test_another_timeout_of_the_stopper_is_raised_after_the_join(loop):
    cleaning, release, ended = loom.Event(), loom.Event(), []

    def stopper(target):
        with loom.timeout(0.02):
            loom.cancel_and_join([target], timeout_s=None)

    def main():
        target = loop.spawn(slow_to_stop, cleaning, release, ended, name="target")
        loom.sleep(0)
        stopping = loop.spawn(stopper, target, name="stopper")
        cleaning.wait()
        loom.sleep(0.05)                  # the stopper's 0.02 s scope fired first (timer order)
        assert not stopping.done
        release.post()
        with pytest.raises(TimeoutError):
            stopping.join()
        assert target.done

    loop.run(main)
    assert ended == ["target"]


def test_a_join_timeout_is_reported_by_name(loop, caplog):
    cleaning, release, ended = loom.Event(), loom.Event(), []

    def main():
        target = loop.spawn(slow_to_stop, cleaning, release, ended, name="stubborn")
        loom.sleep(0)
        with caplog.at_level(logging.WARNING, logger="observer.loom"):
            report = loom.cancel_and_join([target], timeout_s=0.01)
        assert report.late == (target,)
        assert report.failed == ()
        assert not target.done
        loom.sleep(0)                                   # the deadline left no stray timeout
        release.post()
        with pytest.raises(loom.Cancelled):
            target.join()

    loop.run(main)
    assert any(r.getMessage() == "fiber_join_timeout" and r.args["fiber"] == "stubborn"
               for r in caplog.records)


def test_a_target_error_is_reported_and_logged_not_raised_into_the_stopper(loop, caplog):
    def fails_on_cancel():
        try:
            loom.sleep(60)
        except loom.Cancelled:
            raise KeyError("cleanup failed") from None

    def main():
        target = loop.spawn(fails_on_cancel, name="clumsy")
        ok = loop.spawn(sleeper, name="fine")
        loom.sleep(0)
        with caplog.at_level(logging.ERROR, logger="observer.loom"):
            report = loom.cancel_and_join([target, ok], timeout_s=10.0)
        assert report.failed == (target,)
        assert report.late == ()
        assert isinstance(target.error, KeyError)
        return "carried on"

    assert loop.run(main) == "carried on"
    assert any(r.getMessage() == "fiber_failed" and r.args["fiber"] == "clumsy"
               for r in caplog.records if r.levelno == logging.ERROR)


def test_the_caller_among_the_targets_is_skipped(loop):
    def main():
        other = loop.spawn(sleeper, name="other")
        loom.sleep(0)
        report = loom.cancel_and_join([other, loom.current_fiber()], timeout_s=10.0)
        assert report.late == ()
        assert other.done
        loom.sleep(0)                                   # the caller was not cancelled
        return "carried on"

    assert loop.run(main) == "carried on"


def test_outside_a_fiber_it_only_cancels(loop):
    target = loop.spawn(sleeper, name="never_started")
    report = loom.cancel_and_join([target], timeout_s=10.0)
    assert report.late == (target,)                     # nothing can wait outside a fiber
    loop.run()
    assert target.done
    assert isinstance(target.error, loom.Cancelled)


def test_from_a_loop_callback_it_only_cancels_even_during_a_fibers_inline_poll(loop, closing):
    """A completion callback may run on a waiting fiber's greenlet (the fiber polls inline when
    nothing else is ready); cancel_and_join there must not wait on that fiber's behalf."""
    import socket

    a, b = closing(*socket.socketpair())
    reports = []

    def main():
        target = loop.spawn(sleeper, name="target")
        loom.sleep(0)

        def on_read(result):
            reports.append(loom.cancel_and_join([target], timeout_s=10.0))

        loop.read(b, bytearray(4), on_read)
        a.send(b"x")
        loom.sleep(0.05)                    # nothing else ready: this wait may poll inline
        return target.done

    assert loop.run(main) is True
    assert len(reports) == 1
    assert [fiber.name for fiber in reports[0].late] == ["target"]   # cancelled, not waited for


def test_from_a_loop_callback_it_only_cancels_even_during_a_turn_end_poll(loop, closing):
    """A fiber whose reads keep completing at once polls without blocking, on its own greenlet,
    each time its turn budget runs out; a completion callback run by that poll must not act
    as that fiber either (it waited on the streamer's behalf, inside the poll)."""
    import socket

    a, b = closing(*socket.socketpair())
    a.sendall(b"x" * 1000)                  # every 1-byte read completes at once
    c, d = closing(*socket.socketpair())
    reports = []

    def main():
        target = loop.spawn(sleeper, name="target")
        loom.sleep(0)

        def on_read(result):
            reports.append(loom.cancel_and_join([target], timeout_s=10.0))

        loop.read(d, bytearray(4), on_read)
        c.send(b"x")                        # ready now: the first turn-end poll delivers it
        buf = bytearray(1)
        for _ in range(1000):
            loom.recv_into(b, buf)
        loom.sleep(0)
        return target.done

    assert loop.run(main) is True
    assert len(reports) == 1
    assert [fiber.name for fiber in reports[0].late] == ["target"]   # cancelled, not waited for
