"""The observer's stats in the Prometheus text exposition format (version 0.0.4).

Why in obclient: `obctl stats --prometheus` is how an operator feeds a node exporter's textfile
collector (`obctl stats --prometheus > dir/observer.prom.tmp && mv ... observer.prom`, from a
timer) or any scrape job that runs a command; obctl must stay importable without the observer,
so the rendering lives beside it. It takes the `Stats` reply as it comes over the control socket
and writes one block per metric: `# HELP`, `# TYPE`, then one sample per label set.

Naming follows Prometheus conventions: an `observer_` prefix, base units in the name
(`_seconds`), counters end in `_total`, gauges do not. Labels: `instance_name` on every sample
(two observers on one host do not collide), `shard` on shard samples, `book`, `exchange` and
`shard` on book samples. Label values are escaped (backslash, double quote, newline) as the
format requires. A stat the server does not send is left out rather than invented.
"""

from __future__ import annotations

NS_PER_S = 1e9

# (stats key, metric name, type, help) per observer-wide value
OBSERVER_METRICS = (
    ("uptime_s", "observer_uptime_seconds", "gauge", "Seconds since the observer started."),
    ("books", "observer_books", "gauge", "Books served."),
    ("shards", "observer_shards", "gauge", "Shards (one process per core with --cores)."),
    ("clients", "observer_clients", "gauge", "Control-socket clients connected now."),
    ("accepted", "observer_clients_accepted_total", "counter", "Control-socket connections accepted."),
    ("denied", "observer_clients_denied_total", "counter", "Connections refused by peer credentials."),
    ("refused_busy", "observer_clients_refused_busy_total", "counter",
     "Connections refused BUSY (a connection limit reached, or out of fds)."),
    ("closed_idle", "observer_clients_closed_idle_total", "counter",
     "Connections closed for saying nothing and subscribing to nothing for client_idle_s."),
    ("generation", "observer_generation", "gauge", "Segment generation (changes on restart)."),
)

SHARD_METRICS = (
    ("alive", "observer_shard_up", "gauge", "1 while the shard's process runs."),
    ("restarts", "observer_shard_restarts_total", "counter",
     "Times the supervisor restarted this shard after it died."),
    ("records", "observer_shard_ring_records_total", "counter",
     "Update records the shard appended to its ring."),
    ("flushes", "observer_shard_flushes_total", "counter",
     "Eventfd wake-ups the shard wrote (one per batch)."),
    ("heartbeat_age_s", "observer_shard_heartbeat_age_seconds", "gauge",
     "Seconds since the shard's last heartbeat."),
    ("books", "observer_shard_books", "gauge", "Books this shard writes."),
)

BOOK_METRICS = (
    ("updates", "observer_book_updates_total", "counter", "Publishes of the book."),
    ("messages", "observer_book_messages_total", "counter", "Feed messages applied to the book."),
    ("gaps", "observer_book_gaps_total", "counter", "Sequence gaps detected."),
    ("resyncs", "observer_book_resyncs_total", "counter", "Rebuilds from a snapshot."),
    ("checksum_errors", "observer_book_checksum_errors_total", "counter",
     "Exchange checksum mismatches."),
    ("reconnects", "observer_book_reconnects_total", "counter", "Reconnects of the book's feed."),
    ("snapshots", "observer_book_snapshots_total", "counter", "Snapshots applied (REST or WebSocket)."),
    ("stale_marks", "observer_book_stale_marks_total", "counter", "Times marked stale."),
    ("lagging_count", "observer_book_lagging_total", "counter", "Times the lag crossed its bound."),
    ("stale", "observer_book_stale", "gauge", "1 while the book is stale."),
    ("lag_ns", "observer_book_lag_seconds", "gauge",
     "Last local receive time minus exchange event time."),
    ("lag_max_ns", "observer_book_lag_max_seconds", "gauge", "Largest lag seen."),
    ("unread_bytes", "observer_book_unread_bytes", "gauge",
     "Bytes received on the book's feed connection and not yet parsed (sampled)."),
    ("last_update_age_s", "observer_book_last_update_age_seconds", "gauge",
     "Seconds since the book was last published."),
)
_SECONDS_FROM_NS = {"lag_ns", "lag_max_ns"}


def escape(value) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs) -> str:
    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in pairs) + "}"


def _number(value) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


def _block(lines, name, kind, help_text, samples) -> None:
    samples = [(labels, v) for labels, v in samples if v is not None]
    if not samples:
        return
    lines.append(f"# HELP {name} {help_text}")
    lines.append(f"# TYPE {name} {kind}")
    lines.extend(f"{name}{_labels(labels)} {_number(v)}" for labels, v in samples)


def render(observer: dict, books: list, clients: list | None = None) -> str:
    """The exposition text for one Stats reply (observer dict, book dicts)."""
    instance = (("instance_name", observer.get("name", "")),)
    lines: list[str] = []
    for key, name, kind, help_text in OBSERVER_METRICS:
        _block(lines, name, kind, help_text, [(instance, observer.get(key))])
    shards = observer.get("shard_list") or []
    for key, name, kind, help_text in SHARD_METRICS:
        _block(lines, name, kind, help_text,
               [(instance + (("shard", s["shard"]),), s.get(key)) for s in shards])
    for key, name, kind, help_text in BOOK_METRICS:
        _block(lines, name, kind, help_text, [(_book_labels(instance, b), _book_value(b, key))
                                              for b in books])
    return "\n".join(lines) + "\n"


def _book_labels(instance, book: dict) -> tuple:
    exchange = book.get("exchange") or book["book"].partition(":")[0]
    return instance + (("book", book["book"]), ("exchange", exchange),
                       ("shard", book.get("shard", 0)))


def _book_value(book: dict, key: str):
    value = book.get(key)
    if value is not None and key in _SECONDS_FROM_NS:
        return value / NS_PER_S
    return value
