"""Exchange timestamps to integer nanoseconds, without floats.

Coinbase and Kraken stamp events with RFC 3339 text ("2026-11-01T12:00:00.123456789Z"). The
date-and-seconds prefix changes once a second, so its epoch value is cached and only the
fraction is parsed per message. Times must be UTC ("Z" or "+00:00"); anything else raises
ValueError, which adapters turn into FeedProtocolError.

Discussion: the cache is keyed by wall-clock seconds, so it gains an entry every second for as
long as the process runs, and each new second is one `strptime` whatever its bound. Exchange
times are about now, so only the last few seconds are ever looked up again: the bound is a
minute's worth, emptied when full. It was 4096, i.e. 68 minutes of entries (about 150 bytes
each) before the first emptying: a steady RSS creep in every shard with a Kraken or Coinbase
feed, which a soak of an hour still saw as a leak (bench/soak.py).
"""

import calendar
import time

NS_PER_S = 1_000_000_000      # the feeds' time units, in one place
NS_PER_MS = 1_000_000

prefix_cache_max = 64         # seconds remembered (see the discussion above)
_prefix_ns = {}


def rfc3339_ns(text):
    """'2026-11-01T12:00:00.123456789Z' -> ns since the epoch (UTC only)."""
    prefix = text[:19]
    base_ns = _prefix_ns.get(prefix)
    if base_ns is None:
        base_ns = calendar.timegm(time.strptime(prefix, "%Y-%m-%dT%H:%M:%S")) * NS_PER_S
        if len(_prefix_ns) >= prefix_cache_max:
            _prefix_ns.clear()
        _prefix_ns[prefix] = base_ns
    rest = text[19:]
    if rest in ("Z", "+00:00"):
        return base_ns
    if rest[:1] != "." or not (rest.endswith("Z") or rest.endswith("+00:00")):
        raise ValueError(f"not an RFC 3339 UTC time: {text!r}"[:100])
    digits = rest[1:].rstrip("Z").removesuffix("+00:00")
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 9:
        raise ValueError(f"bad fraction in time: {text!r}"[:100])
    return base_ns + int(digits.ljust(9, "0"))
