"""Choosing a backend: probe once, allow an override, fail clearly.

`make_backend(None)` tries the names in `PROBE_ORDER` and takes the first that sets up;
when an earlier one is refused it says so in one log line, once per process. The order is the
benchmark's verdict on this machine kind (bench/loop_echo.py, README "loom"): epoll first,
because from Python one `epoll_wait` plus the call costs less than building, submitting and
reaping an SQE for the single-socket workloads that dominate here; io_uring is next. A name
asked for (`make_backend("io_uring")`, `observer --backend io_uring`) is taken exactly: if it
cannot run here (a seccomp profile, `kernel.io_uring_disabled`, a locked-memory limit, another
OS) that is `BackendUnavailable` naming the backend and why, never a silent substitute.
"""

from __future__ import annotations

import importlib
import logging

from ._common import LoomError

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


def _load(name: str):
    if name not in BACKENDS:
        raise LoomError(f"unknown loom backend {name!r}; known: {', '.join(BACKENDS)}")
    module_name, class_name = BACKENDS[name]
    try:
        module = importlib.import_module(f".{module_name}", __package__)
    except ImportError as exc:
        raise BackendUnavailable(name, str(exc)) from None
    return getattr(module, class_name)


def make_backend(name: str | None = None):
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
            log.warning("loom: running on %s (%s)", candidate,
                        "; ".join(f"{exc.backend}: {exc.reason}" for exc in refusals))
        return backend
    raise LoomError("no loom backend works here: " + "; ".join(map(str, refusals)))


def unavailable_reason(name: str) -> str | None:
    """Why `name` cannot run here, or None when it can."""
    try:
        backend = _load(name)()
    except BackendUnavailable as exc:
        return exc.reason
    except OSError as exc:
        return str(exc)
    backend.close()
    return None


def available_backends() -> list[str]:
    """Every backend that sets up on this machine (tests parametrise over these)."""
    return [name for name in BACKENDS if unavailable_reason(name) is None]
