"""The backend shape, and choosing one: probe once, allow an override, fail clearly.

`Backend` is the one shape every I/O backend has (io_uring in backend_uring.py; epoll and kqueue
in backend_epoll.py and backend_kqueue.py over the readiness dispatch they share, _readiness.py):
operations in, completions out. The loop above submits an `Op` on a registered fd and later, in
one of its polls, the backend calls the op's callback with the result, whether the kernel ran the
call (io_uring) or the backend ran it itself once the fd was ready (epoll, kqueue). A cancelled
op's callback is never called.

Choosing: `make_backend(None)` tries the names in `PROBE_ORDER` and takes the first that sets up;
when an earlier one is refused it says so in one log line, once per process. The order is the
benchmark's verdict on this machine kind (bench/loop_echo.py, README "loom"): epoll first,
because from Python one `epoll_wait` plus the call costs less than building, submitting and
reaping an SQE for the single-socket workloads that dominate here; io_uring is next. A name
asked for (`make_backend("io_uring")`, `observer --backend io_uring`) is taken exactly: if it
cannot run here (a seccomp profile, `kernel.io_uring_disabled`, a locked-memory limit, another
OS) that is `BackendUnavailable` naming the backend and why, never a silent substitute.
"""

from __future__ import annotations

import abc
import importlib
import logging
from dataclasses import dataclass

from ._common import FdState, LoomError, Op

log = logging.getLogger("observer.loom")

BACKENDS = {
    "io_uring": ("backend_uring", "UringBackend"),
    "epoll": ("backend_epoll", "EpollBackend"),
    "kqueue": ("backend_kqueue", "KqueueBackend"),
}
# Default order for Loop(backend=None). See README "loom": the order follows the benchmark
# measured on this machine (bench/loop_echo.py).
PROBE_ORDER = ("epoll", "io_uring", "kqueue")

_fallbacks_logged: set[str] = set()


class BackendUnavailable(LoomError):
    """This backend cannot run here; `backend` names it and `reason` says why."""

    def __init__(self, backend: str, reason: str):
        super().__init__(f"loom backend {backend!r} cannot run here: {reason}")
        self.backend = backend
        self.reason = reason


@dataclass(frozen=True)
class BackendStats:
    backend: str
    submitted: int                  # ops handed to the backend
    completed: int                  # completions delivered to callbacks
    polls: int                      # poll() calls
    pending: int                    # ops submitted and neither completed nor cancelled
    overflow_high_water: int = 0    # io_uring: most ops waiting for a free submission entry
    enters: int = 0                 # io_uring: io_uring_enter calls (a poll may skip it)


class Backend(abc.ABC):
    """Operations in, completions out; what the loop needs from io_uring, epoll or kqueue.

    Rules every backend keeps (tests/loom/test_backend_contract.py checks them on each):
    - An op is submitted on a registered `FdState`; at most one reader (recv, read, accept,
      wait_readable) and one writer (the rest) wait per fd, a second is a `LoomError`.
    - Its callback runs from a later `poll()`, never from `submit()`, exactly once, with the
      result or an `OSError` instance; then `op.in_flight` is False again and the op reusable.
    - After `cancel(op)` the callback never runs, `pending` no longer counts it, and whatever
      the op would have taken (bytes, a connection) is left for the next op on that fd.
    - `pending` counts ops submitted and neither completed nor cancelled: when it is 0 and
      `has_runnable()` is False, no poll can deliver anything.
    """

    name: str                # "io_uring", "epoll", "kqueue"
    # True when a poll sets an fd's `in_hint` on an IN edge even with no op parked there
    # (readiness backends), so a fiber may wait for an edge by polling, no op parked
    # (`Loop.poll_inline` with an `edge`); io_uring only reports completions of ops it was given.
    edge_hints: bool
    pending: int

    @abc.abstractmethod
    def register(self, state: FdState) -> None:
        """Watch the fd (once per FdState; the loop's fd table calls it); set `registered`."""

    @abc.abstractmethod
    def unregister(self, state: FdState) -> None:
        """Stop watching the fd, before it is closed; clear `registered`."""

    @abc.abstractmethod
    def submit(self, op: Op) -> None:
        """Start `op` (its `kind`, `state` and buffer set); it completes in a later poll."""

    @abc.abstractmethod
    def cancel(self, op: Op) -> None:
        """Withdraw `op`: its callback is never called. Harmless if it already completed."""

    @abc.abstractmethod
    def poll(self, timeout_s: float | None) -> int:
        """Deliver the completions ready now, waiting up to `timeout_s` (None: no limit, 0:
        not at all) for the first; returns how many were delivered."""

    @abc.abstractmethod
    def has_runnable(self) -> bool:
        """Whether the next poll has work of its own (it then does not block)."""

    @abc.abstractmethod
    def statistics(self) -> BackendStats:
        ...

    @abc.abstractmethod
    def close(self) -> None:
        """Release the kernel objects; ops still in the kernel are cancelled and waited for."""


def _load(name: str) -> type[Backend]:
    if name not in BACKENDS:
        raise LoomError(f"unknown loom backend {name!r}; known: {', '.join(BACKENDS)}")
    module_name, class_name = BACKENDS[name]
    try:
        module = importlib.import_module(f".{module_name}", __package__)
    except ImportError as exc:
        raise BackendUnavailable(name, str(exc)) from None
    return getattr(module, class_name)


def make_backend(name: str | None = None) -> Backend:
    """The backend `name`, or BackendUnavailable; with None, the first of PROBE_ORDER that
    sets up (one log line, once per process, when an earlier one was refused)."""
    if name is not None:
        return _load(name)()
    refusals = []
    for candidate in PROBE_ORDER:
        try:
            backend = _load(candidate)()
        except BackendUnavailable as exc:
            refusals.append(exc)
            continue
        if refusals and candidate not in _fallbacks_logged:
            _fallbacks_logged.add(candidate)
            log.warning("loom_backend_fallback", {
                "backend": candidate,
                "refused": "; ".join(f"{exc.backend}: {exc.reason}" for exc in refusals)})
        return backend
    raise LoomError("no loom backend works here: " + "; ".join(map(str, refusals)))


def unavailable_reason(name: str) -> str | None:
    """Why `name` cannot run here ("kqueue: this OS has no select.kqueue"), or None when it
    can."""
    try:
        backend = _load(name)()
    except BackendUnavailable as exc:
        return f"{exc.backend}: {exc.reason}"
    except OSError as exc:
        return str(exc)
    backend.close()
    return None


def available_backends() -> list[str]:
    """Every backend that sets up on this machine (tests parametrise over these)."""
    return [name for name in BACKENDS if unavailable_reason(name) is None]
