"""Memory tracing for a long-running shard: off unless `OBSERVER_TRACEMALLOC_S` is set.

Why: a process that runs for weeks must keep nothing per message, per event or per reconnect,
and a slow RSS creep (tens of KB a minute) is invisible in tests that run for seconds. With
`OBSERVER_TRACEMALLOC_S=60` in its environment a shard starts `tracemalloc` and, every 60 s,
logs (logger `observer.telemetry.memtrace`, level INFO):

- `memtrace_top`: the source lines whose live allocations grew the most since the previous
  report and since the first one (size and block count, with the two callers above the line);
- `memtrace_types`: the object types (`gc.get_objects()`) whose count grew the most since the
  first report;
- `memtrace_totals`: traced bytes, `sys.getallocatedblocks()` and the process's RssAnon.

A leak shows as a line or a type that grows report after report, by about the same amount per
message handled; allocator settling (arenas and pools that grow, then hold) shows as RssAnon
that flattens while the traced totals stay flat. bench/soak.py passes the variable with
`--tracemalloc-s`.

Debugging only: tracing costs a few µs per allocation and a snapshot blocks the loop for tens of
ms (the watchdog reports it), so it is an environment variable, not a configuration key. Unset,
`start()` reads one variable and returns; nothing else runs.
"""

from __future__ import annotations

import collections
import gc
import logging
import os
import sys
import tracemalloc

from observer import loom
from observer.telemetry.logs import log_event

log = logging.getLogger("observer.telemetry.memtrace")

ENV_PERIOD_S = "OBSERVER_TRACEMALLOC_S"
FRAMES_MAX = 4            # frames kept per allocation: the line and three callers
TOP_N = 12                # lines and types per report
IGNORED = (tracemalloc.Filter(False, tracemalloc.__file__),
           tracemalloc.Filter(False, "<frozen importlib._bootstrap*>"),
           tracemalloc.Filter(False, "*/linecache.py"))


def period_s(environ=os.environ) -> float | None:
    """The report period asked for in the environment, or None when tracing is off."""
    text = environ.get(ENV_PERIOD_S, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        log.warning("%s=%r is not a number of seconds: memory tracing stays off",
                    ENV_PERIOD_S, text)
        return None
    return value if value > 0 else None


def start(loop, name: str, environ=os.environ):
    """Start tracing and spawn the reporting fiber when the environment asks; else None."""
    every_s = period_s(environ)
    if every_s is None:
        return None
    tracemalloc.start(FRAMES_MAX)
    return loop.spawn(run, name, every_s, name=f"{name}-memtrace")


def run(name: str, every_s: float) -> None:
    """Report every `every_s` until cancelled (the shard's stop), then stop tracing. The first
    period is start-up (connects, snapshots, first allocations of every buffer), so the
    baseline is taken at its end."""
    try:
        loom.sleep(every_s)
        first_types = _type_counts()
        first = prev = _sites()
        while True:
            loom.sleep(every_s)
            types = _type_counts()
            sites = _sites()
            for label, base in (("last", prev), ("first", first)):
                for i, (size_diff, count_diff, where) in enumerate(grown_sites(sites, base)):
                    log_event(log, "memtrace_top", proc=name, since=label, rank=i,
                              size_diff=size_diff, count_diff=count_diff, where=where)
            grown = sorted(((n - first_types.get(t, 0), t) for t, n in types.items()),
                           reverse=True)
            log_event(log, "memtrace_types", proc=name,
                      grown=", ".join(f"{t} {d:+d}" for d, t in grown[:TOP_N] if d > 0))
            traced, _ = tracemalloc.get_traced_memory()
            log_event(log, "memtrace_totals", proc=name, traced_bytes=traced,
                      blocks=sys.getallocatedblocks(), rss_anon_kb=_rss_anon_kb())
            prev = sites
    finally:
        tracemalloc.stop()


def grown_sites(sites: dict, base: dict, top_n: int = TOP_N) -> list[tuple[int, int, str]]:
    """The `top_n` allocation sites that grew most from `base` to `sites`, as (bytes, blocks,
    "file:line < caller < caller")."""
    grown = []
    for traceback, (size, count) in sites.items():
        size0, count0 = base.get(traceback, (0, 0))
        if size > size0:
            grown.append((size - size0, count - count0, traceback))
    grown.sort(key=lambda g: g[0], reverse=True)
    return [(size, count, " < ".join(f"{_short(f.filename)}:{f.lineno}" for f in reversed(tb)))
            for size, count, tb in grown[:top_n]]


def _sites() -> dict:
    """{traceback: (bytes, blocks)} of every live traced allocation, grouped by site. Kept as
    a dict of a few thousand sites, not a snapshot of every block, so that holding two of
    them does not itself show up as growth in the type counts."""
    snap = tracemalloc.take_snapshot().filter_traces(IGNORED)
    return {stat.traceback: (stat.size, stat.count) for stat in snap.statistics("traceback")}


def _type_counts() -> dict[str, int]:
    return collections.Counter(type(o).__qualname__ for o in gc.get_objects())


def _short(filename: str) -> str:
    parts = filename.replace(os.sep, "/").split("/")
    return "/".join(parts[-2:])


def _rss_anon_kb() -> int:
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"RssAnon:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return -1
