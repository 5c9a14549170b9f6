r"""The log line shape shared by the observer and obrelay: one line per event, an event name with
fields, as text or JSON, so one grep or one collector reads both.

Text form: `2026-11-22T01:02:03.456Z WARNING feeds.kraken resync book=kraken:BTCUSD reason=gap`
JSON form: `{"ts":"...","level":"warning","logger":"feeds.kraken","event":"resync",...}`

It lives in obproto because obrelay ships in the obclient distribution and must not import the
server, while the server may import obproto. Each side keeps its own `log_event` and `setup`
and gives the formatters here two things: where a record's fields are (`fields`) and how a dict
becomes JSON text (`dumps`: the server has orjson, the client distribution only the standard
library).

Peers write some of what is logged: a client's name, an exchange's or a NATS server's error
text, a book name, an exception's message. So the formatters, not the call sites, make every
line inert: in text, every control character of the message and of each field value is written
as a backslash escape (`\x1b`, `\r`, `\u2028`; a value holding one is quoted, and its
backslashes doubled, so the escape is unambiguous), and the lines of a traceback are indented,
so a line that does not start with a space always starts a record. JSON stays valid JSON: the
characters JSON allows raw but a terminal acts on are written as `\u` escapes, and text that is
not valid Unicode (lone surrogates from undecodable bytes) is escaped instead of failing the line.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}
FORMATS = ("text", "json")

# A record's fields (a dict of name to value) and a dict's JSON text: what each side injects.
FieldsOf = Callable[[logging.LogRecord], Mapping[str, Any]]
Dumps = Callable[[Any], str]


def timestamp(record: logging.LogRecord) -> str:
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
    def __init__(self, fields: FieldsOf):
        super().__init__()
        self.fields = fields

    def format(self, record: logging.LogRecord) -> str:
        parts = [timestamp(record), record.levelname, record.name, escape(record.getMessage())]
        parts.extend(f"{key}={_text_value(value)}" for key, value in self.fields(record).items())
        line = " ".join(parts)
        if record.exc_info:
            trace = self.formatException(record.exc_info)
            line += "".join("\n    " + escape(text) for text in trace.split("\n"))
        return line


def json_dumps(value: Any) -> str:
    """The standard library's JSON, compact as orjson writes it; raw Unicode (ensure_ascii off)
    keeps lines greppable, and json escapes C0 controls itself."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


class JsonFormatter(logging.Formatter):
    """`dumps` renders what it cannot encode with `default=str`; lone surrogates it may either
    write raw (json) or refuse with a TypeError or ValueError (orjson): both end escaped."""

    def __init__(self, fields: FieldsOf, dumps: Dumps = json_dumps):
        super().__init__()
        self.fields = fields
        self.dumps = dumps

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
            "pid": record.process,
        }
        for key, value in self.fields(record).items():
            out.setdefault(str(key), value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        try:
            text = self.dumps(out)
        except (TypeError, ValueError):           # orjson: lone surrogates are not UTF-8
            text = None
        if text is None or _SURROGATES.search(text):
            text = self.dumps(_json_safe(out))
        return _UNSAFE_IN_JSON.sub(_json_escape_char, text)


def _json_escape_char(match: re.Match) -> str:
    """Only inside JSON strings can these appear; there a `\\u` escape of four hex digits is
    the same character."""
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


def check_setup(log_format: str, level: str) -> None:
    """Refuse a format or level this module does not know, naming the ones it does."""
    if log_format not in FORMATS:
        raise ValueError(f"log format {log_format!r}: expected text or json")
    if level not in LEVELS:
        raise ValueError(f"log level {level!r}: expected one of {', '.join(LEVELS)}")


def install(handler: logging.Handler, level: str) -> None:
    """Make `handler` the one handler of this process's root logger, at `level`."""
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LEVELS[level])
