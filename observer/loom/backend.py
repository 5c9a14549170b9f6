"""Choosing a backend: probe once, allow an override, fail clearly.

`make_backend(None)` tries the names in `PROBE_ORDER` and takes the first that sets up. The
order is the benchmark's verdict on this machine kind (bench/loop_echo.py, README "loom"):
epoll first, because from Python one `epoll_wait` plus the call costs less than building,
submitting and reaping an SQE for the single-socket workloads that dominate here; io_uring is
next. `make_backend("io_uring")` asks for io_uring; if its setup is refused (a seccomp
profile, `kernel.io_uring_disabled`, a locked-memory limit), the loop runs on epoll and says
so once in the log. Any other name is taken exactly or raises `LoomError` saying why.
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
FALLBACK = {"io_uring": "epoll"}      # a refused io_uring setup degrades, loudly, once

_refusals_logged: set[str] = set()


class BackendUnavailable(LoomError):
    """This backend cannot run here; the message says why."""


def _load(name: str):
    if name not in BACKENDS:
        raise LoomError(f"unknown loom backend {name!r}; known: {', '.join(BACKENDS)}")
    module_name, class_name = BACKENDS[name]
    try:
        module = importlib.import_module(f".{module_name}", __package__)
    except ImportError as exc:
        raise BackendUnavailable(f"{name}: {exc}") from None
    return getattr(module, class_name)


def make_backend(name: str | None = None):
    if name is not None:
        try:
            return _load(name)()
        except BackendUnavailable as exc:
            fallback = FALLBACK.get(name)
            if fallback is None:
                raise
            if name not in _refusals_logged:
                _refusals_logged.add(name)
                log.warning("loom: %s refused (%s); running on %s", name, exc, fallback)
            return _load(fallback)()
    reasons = []
    for candidate in PROBE_ORDER:
        try:
            return _load(candidate)()
        except BackendUnavailable as exc:
            reasons.append(str(exc))
            if candidate not in _refusals_logged and candidate != "kqueue":
                _refusals_logged.add(candidate)
                log.warning("loom: %s unavailable (%s); trying the next backend", candidate, exc)
    raise LoomError("no loom backend works here: " + "; ".join(reasons))


def unavailable_reason(name: str) -> str | None:
    """Why `name` cannot run here, or None when it can."""
    try:
        backend = _load(name)()
    except (BackendUnavailable, OSError) as exc:
        return str(exc)
    backend.close()
    return None


def available_backends() -> list[str]:
    """Every backend that sets up on this machine (tests parametrise over these)."""
    names = []
    for name in BACKENDS:
        try:
            backend = _load(name)()
        except (BackendUnavailable, OSError):
            continue
        backend.close()
        names.append(name)
    return names
