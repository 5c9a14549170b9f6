"""Rate-limit policy, sans-IO: what may be sent or fetched now, given the time passed in.

Two exchange limits bite a long-running book server (docs/EXCHANGES.md sections 1 and 2):
- REST snapshots are weighted and budgeted per IP (Binance spot: 6000 weight a minute, a
  snapshot costs 5/25/50/250 by its `limit`; USD-M futures: 2400, 2/5/10/20). Re-snapshotting
  every symbol at once after a reconnect is how peers get 429 storms and then 418 bans, and
  pacing them at a fixed interval (what this module did before) leaves most of the budget
  unspent: 200 books took 201 s where the budget allows them at once. So snapshots go through
  `SnapshotScheduler`, which spends a `WeightBudget`: as many requests start at once as the
  budget has room for (at most `inflight_max` in flight), the rest wait until weight comes
  back, and a 429/418 `Retry-After` (or a failed fetch) blocks the whole queue until it has
  passed.
- Inbound message limits on a connection (Binance 5/s, Coinbase 8/s per IP): `SendLimiter` is
  a token bucket per connection; texts wait in a bounded queue until a token is free.

Both take `now_ns` from the caller and never read a clock (time is passed in, as in loom's
timers), so tests drive them with plain integers.

The budget, and what the exchange's header adds. Our own log of what we sent in the last window
is exact for our own weight, but the exchange counts per IP: another process, another feed of
the same exchange in another shard, or a restart inside the minute all spend from the same
pot. Every reply carries the exchange's count (`X-MBX-USED-WEIGHT-1M`), so the IP's use now is
taken as the latest header plus what we sent after that request (the header could not include
it); as our own requests the header counted leave the window they are taken off it, while
weight spent by others stays until the header is a whole window old. Two ceilings apply: the
IP's (`weight_max` less a `reserve` kept for other users) against that estimate, and this
feed's share of it (`share`, when several feeds of one exchange split the IP) against our own
log, which a lower header (the exchange's fixed minute turning over) never overrides: the
window is treated as sliding, and a fixed minute is never stricter than that.

The snapshot's `limit` is the other half of the cost. A deeper snapshot costs more weight but
vouches for more levels beyond the published depth, so the book walks out of the vouched range
(and is refetched, going stale meanwhile: binance.py `too_thin`) less often. A request gets the
preferred (deep) limit only while everyone else in the queue could still go at the small one
and a resync of every book at the small one would still fit afterwards; else the small one.
So a cold start of many books goes live at once on a mix of the two, and so does a reconnect
inside the same minute, instead of waiting a minute for weight (200 books at depth 50: 170 at
500 levels and 30 at 100 on a cold start, 4400 of the 5400 usable; all 200 at 100 levels, the
remaining 1000, on a reconnect). Without a good reply in the last `fresh_s`, one request goes
alone before any burst (see `due`).
"""

from collections import deque

from observer.feeds.clock import NS_PER_S


class WeightBudget:
    """REST weight per IP per window: our own log plus the exchange's count (module essay).

    Our requests leave the window a window after their *reply*: the exchange counted each one
    when it arrived, somewhere between our send and its reply, and only the reply time is a
    bound we know (counting from the send let obsim, and so Binance, still hold weight we
    thought gone: a 429, then a 418 ban for the requests already on their way).
    """

    def __init__(self, *, weight_max, window_s=60.0, share=1.0, reserve=0.1):
        assert weight_max > 0 and window_s > 0
        assert 0 < share <= 1 and 0 <= reserve < 1
        self.window_ns = int(window_s * NS_PER_S)
        self.weight_max = weight_max
        self.ip_max = int(weight_max * (1 - reserve))
        self.own_max = max(1, int(self.ip_max * share))
        self.spent = deque()  # [sent_ns, weight, replied_ns or None] of ours, by sent_ns
        self.spent_sum = 0
        self.seen_used = 0  # the exchange's count in the latest header, less what left since
        self.seen_sent_ns = None  # when the request that header answered was sent
        self.since_seen = 0  # our weight sent after seen_sent_ns (not in the header)

    def prune(self, now_ns):
        """Forget what left the window; the header's count loses our share of it too. In
        send order: one still in flight holds back those behind it (safe, and brief)."""
        spent = self.spent
        while spent and spent[0][2] is not None and now_ns - spent[0][2] >= self.window_ns:
            sent_ns, weight, _ = spent.popleft()
            self.spent_sum -= weight
            if self.seen_sent_ns is not None and sent_ns <= self.seen_sent_ns:
                self.seen_used = max(0, self.seen_used - weight)
            else:
                self.since_seen -= weight
        if self.seen_sent_ns is not None and now_ns - self.seen_sent_ns >= self.window_ns \
                and not (spent and spent[0][0] <= self.seen_sent_ns):
            self.seen_used = 0  # a window old and none of ours it counted is left: all gone
            self.seen_sent_ns = None
            self.since_seen = self.spent_sum
        assert self.spent_sum >= 0 and self.since_seen >= 0

    def spend(self, weight, now_ns):
        """Record a request sent now; returns its entry, for `settle` when it is answered."""
        entry = [now_ns, weight, None]
        self.spent.append(entry)
        self.spent_sum += weight
        self.since_seen += weight
        return entry

    def settle(self, entry, now_ns):
        """The request's reply came (or it failed): its window runs from now."""
        entry[2] = now_ns

    def observe(self, used, sent_ns, now_ns):
        """The exchange's count, from the reply to a request sent at sent_ns."""
        self.prune(now_ns)
        if self.seen_sent_ns is not None and sent_ns < self.seen_sent_ns:
            return  # an older request's reply, overtaken: it knows less
        if sent_ns == self.seen_sent_ns:
            used = max(used, self.seen_used)
        self.seen_used = used
        self.seen_sent_ns = sent_ns
        self.since_seen = sum(weight for sent, weight, _ in self.spent if sent > sent_ns)

    def used(self, now_ns):
        """The IP's weight in use now, as well as we can tell."""
        self.prune(now_ns)
        if self.seen_sent_ns is None:
            return self.spent_sum
        return self.seen_used + self.since_seen

    def room(self, now_ns):
        """Weight we may still spend now."""
        used = self.used(now_ns)
        return min(self.own_max - self.spent_sum, self.ip_max - used)


class SnapshotScheduler:
    """REST snapshot requests spending a WeightBudget, Retry-After honoured.

    `tiers`: (limit, weight) pairs the exchange offers, `limit_min` <= `limit_pref` among
    them (module essay: which one a request gets). `due` hands out (symbol, limit) pairs.
    A burst (up to `inflight_max` at once) goes only within `fresh_s` of a good reply; else
    one request probes first. `books_kept`: deep requests leave room for that many small ones
    (the adapter's book count: a reconnect right after a cold start still goes at once).
    """

    def __init__(self, budget, *, tiers, limit_pref, limit_min=None, inflight_max=8,
                 retry_s=1.0, retry_max_s=30.0, queue_max=4096, weight_header=None, fresh_s=1.0,
                 books_kept=0):
        weights = dict(tiers)
        limit_min = limit_pref if limit_min is None else limit_min
        assert limit_pref in weights and limit_min in weights and limit_min <= limit_pref
        assert inflight_max >= 1
        self.budget = budget
        self.limit_pref = limit_pref
        self.limit_min = limit_min
        self.weight_pref = weights[limit_pref]
        self.weight_min = weights[limit_min]
        self.weights = weights
        self.books_kept = books_kept  # books whose resync at limit_min deep requests leave room for
        assert self.weight_min <= budget.own_max, "a snapshot must fit in the budget"
        self.inflight_max = inflight_max
        self.retry_ns = int(retry_s * NS_PER_S)
        self.retry_max_ns = int(retry_max_s * NS_PER_S)
        self.queue_max = queue_max
        self.weight_header = weight_header  # lower case: headers arrive folded
        self.queue = deque()
        self.queued = set()
        self.inflight = {}  # symbol -> (its budget entry, limit)
        self.blocked_until_ns = 0
        self.fresh_ns = int(fresh_s * NS_PER_S)
        self.fresh_until_ns = 0  # a good reply came recently: bursts may go (see `due`)
        self.failures_in_row = 0
        self.requests = 0
        self.requests_small = 0  # at limit_min for lack of budget
        self.rate_limited = 0
        self.failures = 0

    def request(self, symbol):
        """Ask for a snapshot of symbol (idempotent while queued or in flight)."""
        if symbol in self.inflight or symbol in self.queued:
            return
        if len(self.queue) >= self.queue_max:
            raise OverflowError(f"snapshot queue_max {self.queue_max} reached")
        self.queue.append(symbol)
        self.queued.add(symbol)

    def cancel(self, symbol):
        if symbol in self.queued:
            self.queue.remove(symbol)
            self.queued.discard(symbol)

    def due(self, now_ns):
        """(symbol, limit) to fetch now; they count as in flight until `on_reply`."""
        started = []
        if now_ns < self.blocked_until_ns:
            return started
        queue = self.queue
        # Without a recent good reply, one request goes alone and the burst waits for its
        # answer: our estimate may be wrong (another user of the IP), and requests already on
        # their way when a 429 comes back count as asking again during Retry-After (a ban).
        inflight_max = self.inflight_max if now_ns < self.fresh_until_ns else 1
        while queue and len(self.inflight) < inflight_max:
            room = self.budget.room(now_ns)
            # the deep limit only while everyone else waiting could still go at the small one,
            # and a resync of every book at the small one (a reconnect) would still fit
            spare = room - self.weight_pref - self.weight_min * self.books_kept
            if spare >= self.weight_min * (len(queue) - 1):
                limit, weight = self.limit_pref, self.weight_pref
            elif room >= self.weight_min:
                limit, weight = self.limit_min, self.weight_min
                self.requests_small += 1
            else:
                break
            symbol = queue.popleft()
            self.queued.discard(symbol)
            self.inflight[symbol] = (self.budget.spend(weight, now_ns), limit)
            self.requests += 1
            started.append((symbol, limit))
        return started

    def on_reply(self, symbol, status, headers, now_ns):
        """Record a reply. Returns True if the body is a snapshot to use; else it is requeued."""
        entry, _ = self.inflight.pop(symbol, (None, None))
        if entry is not None:
            self.budget.settle(entry, now_ns)
            self.observe_weight(headers, entry[0], now_ns)
        if status == 200:
            self.failures_in_row = 0
            self.fresh_until_ns = now_ns + self.fresh_ns
            return True
        if status in (429, 418):
            self.rate_limited += 1
            wait_ns = retry_after_ns(headers, self.retry_max_ns)
        else:
            self.failures += 1
            wait_ns = min(self.retry_ns << min(self.failures_in_row, 16), self.retry_max_ns)
        self.failures_in_row += 1
        self.blocked_until_ns = max(self.blocked_until_ns, now_ns + wait_ns)
        if symbol not in self.queued:
            self.queue.appendleft(symbol)
            self.queued.add(symbol)
        return False

    def on_refused(self, symbol, headers, now_ns):
        """The exchange refused the symbol itself (not listed): its weight is settled and it is
        never asked for again; the queue is not blocked (the refusal says nothing of the budget)."""
        entry, _ = self.inflight.pop(symbol, (None, None))
        if entry is not None:
            self.budget.settle(entry, now_ns)
            self.observe_weight(headers, entry[0], now_ns)
        self.cancel(symbol)

    def observe_weight(self, headers, sent_ns, now_ns):
        if not self.weight_header or not headers:
            return
        try:
            used = int(headers.get(self.weight_header, ""))
        except (TypeError, ValueError):
            return
        if used >= 0:
            self.budget.observe(used, sent_ns, now_ns)


def retry_after_ns(headers, default_ns):
    """Retry-After in seconds (the form Binance uses); the default if absent or unreadable."""
    value = (headers or {}).get("retry-after")
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return default_ns
    if not 0 <= seconds <= 3 * 24 * 3600:
        return default_ns
    return int(seconds * NS_PER_S)


class SendLimiter:
    """A token bucket: at most `rate_per_s` texts a second, `burst` at once.

    Texts wait in one bounded queue per connection. The bucket is per connection, or one for
    all of them when the exchange counts per IP (`shared=True`, Coinbase's 8 messages/s).
    """

    def __init__(self, *, rate_per_s, burst, queue_max=256, shared=False):
        assert rate_per_s > 0
        assert burst >= 1
        self.token_ns = int(NS_PER_S / rate_per_s)
        self.burst = burst
        self.queue_max = queue_max
        self.shared = shared
        self.tokens = {}  # bucket key -> (tokens, updated_ns)
        self.queues = {}  # conn_id -> deque of texts

    def bucket(self, conn_id):
        return None if self.shared else conn_id

    def reset(self, conn_id, now_ns):
        """A new connection starts with an empty queue (and a full bucket of its own)."""
        self.queues[conn_id] = deque()
        if not self.shared or None not in self.tokens:
            self.tokens[self.bucket(conn_id)] = (self.burst, now_ns)

    def push(self, conn_id, text):
        queue = self.queues.setdefault(conn_id, deque())
        if len(queue) >= self.queue_max:
            raise OverflowError(f"send queue_max {self.queue_max} reached on connection {conn_id}")
        queue.append(text)

    def ready(self, conn_id, now_ns):
        """Texts that may be sent now on this connection, in order."""
        queue = self.queues.get(conn_id)
        if not queue:
            return []
        key = self.bucket(conn_id)
        tokens, updated_ns = self.tokens.get(key, (self.burst, now_ns))
        earned = (now_ns - updated_ns) // self.token_ns
        if earned > 0:
            tokens = min(self.burst, tokens + earned)
            updated_ns = now_ns if tokens == self.burst else updated_ns + earned * self.token_ns
        out = []
        while queue and tokens >= 1:
            out.append(queue.popleft())
            tokens -= 1
        self.tokens[key] = (tokens, updated_ns)
        return out
