"""Rate-limit policy, sans-IO: what may be sent or fetched now, given the time passed in.

Two exchange limits bite a long-running book server (docs/EXCHANGES.md sections 1 and 2):
- REST snapshots are weighted and budgeted per IP (Binance: 6000 weight/min, 50 per
  1000-level snapshot). Re-snapshotting every symbol at once after a reconnect is how peers
  get 429 storms and then 418 bans. So snapshots go through `SnapshotScheduler`: a FIFO of
  symbols, at most `inflight_max` at a time, starts spaced `interval_s` apart, and a 429/418
  `Retry-After` (or a failed fetch) blocks the whole queue until it has passed.
- Inbound message limits on a connection (Binance 5/s, Coinbase 8/s per IP): `SendLimiter` is
  a token bucket per connection; texts wait in a bounded queue until a token is free.

Both take `now_ns` from the caller and never read a clock (time is passed in, as in loom's
timers), so tests drive them with plain integers.
"""

from collections import deque

NS_PER_S = 1_000_000_000


class SnapshotScheduler:
    """Staggered REST snapshot requests with Retry-After honoured."""

    def __init__(self, *, interval_s=1.0, inflight_max=1, retry_s=1.0, retry_max_s=30.0,
                 queue_max=4096, weight_header=None, weight_soft_max=0, weight_pause_s=10.0):
        assert interval_s >= 0
        assert inflight_max >= 1
        self.interval_ns = int(interval_s * NS_PER_S)
        self.inflight_max = inflight_max
        self.retry_ns = int(retry_s * NS_PER_S)
        self.retry_max_ns = int(retry_max_s * NS_PER_S)
        self.queue_max = queue_max
        # Binance reports the weight used this minute (X-MBX-USED-WEIGHT-1M); past the soft
        # limit the queue pauses before the exchange has to answer 429.
        self.weight_header = weight_header
        self.weight_soft_max = weight_soft_max
        self.weight_pause_ns = int(weight_pause_s * NS_PER_S)
        self.weight_pauses = 0
        self.queue = deque()
        self.inflight = set()
        self.blocked_until_ns = 0
        self.last_start_ns = None
        self.failures_in_row = 0
        self.requests = 0
        self.rate_limited = 0
        self.failures = 0

    def request(self, symbol):
        """Ask for a snapshot of symbol (idempotent while queued or in flight)."""
        if symbol in self.inflight or symbol in self.queue:
            return
        if len(self.queue) >= self.queue_max:
            raise OverflowError(f"snapshot queue_max {self.queue_max} reached")
        self.queue.append(symbol)

    def cancel(self, symbol):
        if symbol in self.queue:
            self.queue.remove(symbol)

    def due(self, now_ns):
        """Symbols to fetch now; they count as in flight until `on_reply`."""
        started = []
        while self.queue and len(self.inflight) < self.inflight_max:
            if now_ns < self.blocked_until_ns:
                break
            if self.last_start_ns is not None and now_ns - self.last_start_ns < self.interval_ns:
                break
            symbol = self.queue.popleft()
            self.inflight.add(symbol)
            self.last_start_ns = now_ns
            self.requests += 1
            started.append(symbol)
        return started

    def on_reply(self, symbol, status, headers, now_ns):
        """Record a reply. Returns True if the body is a snapshot to use; else it is requeued."""
        self.inflight.discard(symbol)
        self.check_weight(headers, now_ns)
        if status == 200:
            self.failures_in_row = 0
            return True
        if status in (429, 418):
            self.rate_limited += 1
            wait_ns = retry_after_ns(headers, self.retry_max_ns)
        else:
            self.failures += 1
            wait_ns = min(self.retry_ns << min(self.failures_in_row, 16), self.retry_max_ns)
        self.failures_in_row += 1
        self.blocked_until_ns = max(self.blocked_until_ns, now_ns + wait_ns)
        if symbol not in self.queue:
            self.queue.appendleft(symbol)
        return False


    def check_weight(self, headers, now_ns):
        if not self.weight_header or not headers:
            return
        try:
            used = int(headers.get(self.weight_header, 0))
        except (TypeError, ValueError):
            return
        if self.weight_soft_max and used >= self.weight_soft_max:
            self.weight_pauses += 1
            self.blocked_until_ns = max(self.blocked_until_ns, now_ns + self.weight_pause_ns)


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
