"""Pinning: run this process on chosen cores (`sched_setaffinity`).

The cores a process may use are fixed by its cpuset when it starts; we remember that set at
import, so that pinning to one core and later to another still checks against what the machine
allows rather than against the last pin. A core that does not exist or is not allowed is a
clear error naming the cores that are.
"""

from __future__ import annotations

import os

_ALLOWED_AT_START = frozenset(os.sched_getaffinity(0))


def allowed_cores() -> list[int]:
    return sorted(_ALLOWED_AT_START)


def pin(cores) -> list[int]:
    """Pin the calling process to `cores` (an int or an iterable of ints); returns them sorted."""
    wanted = {cores} if isinstance(cores, int) else set(cores)
    if not wanted:
        raise ValueError(f"loom.pin: no core given; allowed cores: {allowed_cores()}")
    bad = sorted(c for c in wanted if not isinstance(c, int) or c not in _ALLOWED_AT_START)
    if bad:
        raise ValueError(f"loom.pin: core(s) {bad} do not exist or are not allowed here; "
                         f"allowed cores: {allowed_cores()}")
    try:
        os.sched_setaffinity(0, wanted)
    except OSError as exc:
        raise ValueError(f"loom.pin: cannot pin to {sorted(wanted)} ({exc.strerror}); "
                         f"allowed cores: {allowed_cores()}") from None
    return sorted(wanted)
