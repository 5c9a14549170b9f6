r"""obrelay's log lines: one line per event, an event name with fields, as text or JSON.

The same line shape and escaping rules as the observer's log (so one grep or one collector reads
both): both use obproto/loglines.py, since obrelay ships in the obclient distribution and must
not import the server. JSON is the standard library's here (no orjson in this distribution).

    log_event(log, "stream_updated", stream="OB_x", subjects="ob.x.>")

Text form: `2026-11-22T01:02:03.456Z INFO obrelay stream_updated stream=OB_x subjects=ob.x.>`
JSON form: `{"ts":"...","level":"info","logger":"obrelay","event":"stream_updated",...}`

Peers write some of what is logged (a NATS server's error text, an observer's book names, an
exception's message); the formatters make every line inert (obproto/loglines.py says how).

Plain `logging` calls (nats-py's own, say) still work; their message becomes the event.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from obproto import loglines

_FIELDS_ATTR = "obrelay_fields"


def log_event(logger: logging.Logger, name: str, *, level: int = logging.INFO,
              **fields: Any) -> None:
    """Log event `name` with structured fields (cheap when the level is off)."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={_FIELDS_ATTR: fields})


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return getattr(record, _FIELDS_ATTR, None) or {}


def setup(log_format: str = "text", level: str = "info", stream: Any = None) -> None:
    """Configure the root logger of this process: one handler, one format."""
    loglines.check_setup(log_format, level)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(loglines.JsonFormatter(_fields) if log_format == "json"
                         else loglines.TextFormatter(_fields))
    loglines.install(handler, level)
