"""Structured logging: one line per event, as text or JSON.

Why: an operator greps and a collector parses the same lines. Every event the observer reports
(a reconnect, a resync, a gap, a checksum error, a shard restart, a client connecting) is one
line with an event name and key=value fields, logged once where it happens:

    log_event(log, "resync", book="kraken:BTCUSD", reason="checksum")

Text form: `2026-11-22T01:02:03.456Z WARNING feeds.kraken resync book=kraken:BTCUSD reason=checksum`
JSON form: `{"ts": "...", "level": "warning", "logger": "feeds.kraken", "event": "resync", ...}`

Plain `logging` calls from anywhere in the code still work; their message becomes the event.
Logging is configured once per process by `setup()` (the supervisor and each shard call it);
nothing here reads configuration by itself.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_FIELDS_ATTR = "observer_fields"


def log_event(logger: logging.Logger, name: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """Log event `name` with structured fields (cheap when the level is off)."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={_FIELDS_ATTR: fields})


def _timestamp(record: logging.LogRecord) -> str:
    seconds = int(record.created)
    millis = int((record.created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def _text_value(value: Any) -> str:
    text = str(value)
    if not text or any(c.isspace() or c in '"=' for c in text):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, _FIELDS_ATTR, None) or {}
        parts = [_timestamp(record), record.levelname, record.name, record.getMessage()]
        parts.extend(f"{key}={_text_value(value)}" for key, value in fields.items())
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            "pid": record.process,
        }
        for key, value in (getattr(record, _FIELDS_ATTR, None) or {}).items():
            out.setdefault(key, value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


class _StaticFields(logging.Filter):
    """Adds fixed fields (e.g. `shard=1` in a shard process) to every line, unless the event
    set them itself."""

    def __init__(self, fields: dict[str, Any]):
        super().__init__()
        self.fields = dict(fields)

    def filter(self, record: logging.LogRecord) -> bool:
        own = getattr(record, _FIELDS_ATTR, None) or {}
        setattr(record, _FIELDS_ATTR, {**self.fields, **own})
        return True


def setup(log_format: str = "text", level: str = "info", stream: Any = None,
          fields: dict[str, Any] | None = None) -> None:
    """Configure the root logger of this process: one handler, one format; `fields` are added
    to every line (a shard process tags its lines with its shard index)."""
    if log_format not in ("text", "json"):
        raise ValueError(f"log format {log_format!r}: expected text or json")
    if level not in LEVELS:
        raise ValueError(f"log level {level!r}: expected one of {', '.join(LEVELS)}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    if fields:
        handler.addFilter(_StaticFields(fields))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
