r"""Structured logging: one line per event, as text or JSON.

Why: an operator greps and a collector parses the same lines. Every event the observer reports
(a reconnect, a resync, a gap, a checksum error, a shard restart, a client connecting) is one
line with an event name and key=value fields, logged once where it happens:

    log_event(log, "resync", book="kraken:BTCUSD", reason="checksum")

Text form: `2026-11-22T01:02:03.456Z WARNING feeds.kraken resync book=kraken:BTCUSD reason=checksum`
JSON form: `{"ts": "...", "level": "warning", "logger": "feeds.kraken", "event": "resync", ...}`

Code that must not import this module (observer/loom, which stands alone, and the zygote, which
imports nothing it does not need) logs the same kind of line with plain `logging`: the message
is the event name and one dict argument holds the fields, `log.warning("fiber_stalled",
{"fiber": name, "ran_ms": 52})`; the formatters here render the dict as fields, and any other
handler shows the bare event name. Every line the observer writes has an event name, never
prose: tests/config/test_logs.py holds the code to that.

The line shape and the escaping that makes every line inert (peers write some of what is
logged) are obproto/loglines.py, shared with obrelay; this module says where an event's fields
are and encodes JSON with orjson.

Logging is configured once per process by `setup()` (the supervisor and each shard call it);
nothing here reads configuration by itself.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import Any

import orjson

from obproto import loglines

_FIELDS_ATTR = "observer_fields"


def log_event(logger: logging.Logger, name: str, *, level: int = logging.INFO, exc_info=None,
              **fields: Any) -> None:
    """Log event `name` with structured fields (cheap when the level is off); `exc_info` adds
    a traceback (indented in text, the `exception` field in JSON)."""
    if logger.isEnabledFor(level):
        logger.log(level, name, exc_info=exc_info, extra={_FIELDS_ATTR: fields})


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """The event's fields: from log_event, or the one dict argument of a plain logging call."""
    fields = getattr(record, _FIELDS_ATTR, None)
    if fields is None and isinstance(record.args, Mapping):
        return dict(record.args)
    return fields or {}


def _orjson_dumps(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


def text_formatter() -> loglines.TextFormatter:
    """The text formatter of the observer's lines (also what tests render records with)."""
    return loglines.TextFormatter(_fields)


def json_formatter() -> loglines.JsonFormatter:
    return loglines.JsonFormatter(_fields, _orjson_dumps)


class _StaticFields(logging.Filter):
    """Adds fixed fields (e.g. `shard=1` in a shard process) to every line, unless the event
    set them itself."""

    def __init__(self, fields: dict[str, Any]):
        super().__init__()
        self.fields = dict(fields)

    def filter(self, record: logging.LogRecord) -> bool:
        setattr(record, _FIELDS_ATTR, {**self.fields, **_fields(record)})
        return True


def setup(log_format: str = "text", level: str = "info", stream: Any = None,
          fields: dict[str, Any] | None = None) -> None:
    """Configure the root logger of this process: one handler, one format; `fields` are added
    to every line (a shard process tags its lines with its shard index)."""
    loglines.check_setup(log_format, level)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(json_formatter() if log_format == "json" else text_formatter())
    if fields:
        handler.addFilter(_StaticFields(fields))
    loglines.install(handler, level)
