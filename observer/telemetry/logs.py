r"""Structured logging: one line per event, as text or JSON.

Why: an operator greps and a collector parses the same lines. Every event the observer reports
(a reconnect, a resync, a gap, a checksum error, a shard restart, a client connecting) is one
line with an event name and key=value fields, logged once where it happens:

    log_event(log, "resync", book="kraken:BTCUSD", reason="checksum")

Text form: `2026-11-22T01:02:03.456Z WARNING feeds.kraken resync book=kraken:BTCUSD reason=checksum`
JSON form: `{"ts": "...", "level": "warning", "logger": "feeds.kraken", "event": "resync", ...}`

Plain `logging` calls from anywhere in the code still work; their message becomes the event.

Peers write some of what is logged: a client's name, an exchange's error text or close reason,
a book name, an exception's message. So the formatters, not the call sites, make every line
inert: in text, every control character of the message and of each field value is written as a
backslash escape (`\x1b`, `\r`, `\u2028`; a value holding one is quoted, and its backslashes
doubled, so the escape is unambiguous), and the lines of a traceback are indented, so a line
that does not start with a space always starts a record. JSON stays valid JSON: the characters
JSON allows raw but a terminal acts on are written as `\u` escapes, and text that is not valid
Unicode (lone surrogates from undecodable bytes) is escaped instead of failing the line.

Logging is configured once per process by `setup()` (the supervisor and each shard call it);
nothing here reads configuration by itself.
"""

from __future__ import annotations

import logging
import re
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


# What a terminal, a pager or a line-based collector would act on instead of showing: the C0
# controls (ESC starts a terminal sequence, CR overwrites the line, LF forges one), DEL, the C1
# controls (U+009B is a CSI), the Unicode line and paragraph separators, the bidirectional controls
# (text shown in another order than it was logged), and lone surrogates (undecodable bytes; not
# encodable as UTF-8).
_INERT_IN_JSON = "\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069"
_UNSAFE = re.compile(f"[\x00-\x1f{_INERT_IN_JSON}\ud800-\udfff]")
_UNSAFE_IN_JSON = re.compile(f"[{_INERT_IN_JSON}]")      # JSON escapes C0 itself
_SURROGATES = re.compile("[\ud800-\udfff]")
_NEEDS_QUOTES = re.compile(f'[\\s"=\\\\\x00-\x1f{_INERT_IN_JSON}\ud800-\udfff]')
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(match: re.Match) -> str:
    char = match.group()
    named = _NAMED_ESCAPES.get(char)
    if named is not None:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """`text` with every control character written as a backslash escape: one inert line."""
    return _UNSAFE.sub(_escape_char, text)


def _text_value(value: Any) -> str:
    text = str(value)
    if text and _NEEDS_QUOTES.search(text) is None:
        return text
    return '"' + escape(text.replace("\\", "\\\\").replace('"', '\\"')) + '"'


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, _FIELDS_ATTR, None) or {}
        parts = [_timestamp(record), record.levelname, record.name, escape(record.getMessage())]
        parts.extend(f"{key}={_text_value(value)}" for key, value in fields.items())
        line = " ".join(parts)
        if record.exc_info:
            trace = self.formatException(record.exc_info)
            line += "".join("\n    " + escape(text) for text in trace.split("\n"))
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
        try:
            text = orjson.dumps(out, default=str).decode()
        except orjson.JSONEncodeError:            # lone surrogates: not UTF-8, not for orjson
            text = orjson.dumps(_json_safe(out)).decode()
        return _UNSAFE_IN_JSON.sub(_json_escape_char, text)


def _json_escape_char(match: re.Match) -> str:
    """Only inside JSON strings can these appear; `\\uXXXX` there is the same character."""
    return f"\\u{ord(match.group()):04x}"


def _json_safe(value: Any) -> Any:
    """`value` with every string's lone surrogates escaped (`\\udcff` as text)."""
    if isinstance(value, str):
        return _SURROGATES.sub(_escape_char, value)
    if isinstance(value, dict):
        return {_json_safe(str(k)): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return _json_safe(str(value))


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
