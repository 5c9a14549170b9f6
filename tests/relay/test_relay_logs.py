"""obrelay's log: every line an event name with fields, in the observer's text and JSON shapes,
every control character a peer could send made inert."""

import ast
import io
import json
import logging
import re
from pathlib import Path

import pytest

from kit.procs import unique_name, wait_until
from obrelay import logs
from relaykit import RelayProcess

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 60.0
EVENT_NAME = re.compile(r"[a-z][a-z0-9_]*")
LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical"}
CHECKED = sorted((ROOT / "client" / "obrelay").rglob("*.py"))
TEXT_LINE = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR) "
                       r"obrelay [a-z][a-z0-9_]*( [a-z_]+=\S+)*")


def _capture(fmt: str) -> io.StringIO:
    stream = io.StringIO()
    logs.setup(fmt, "debug", stream=stream)
    return stream


def _log_calls(tree):
    """(line, event argument node) of each logging call: log.warning(X, ...), log.log(L, X),
    log_event(logger, X, ...)."""
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) \
                and func.value.id in ("log", "logger", "logging"):
            if func.attr in LOG_METHODS and node.args:
                yield node.lineno, node.args[0]
            elif func.attr == "log" and len(node.args) > 1:
                yield node.lineno, node.args[1]
        elif isinstance(func, ast.Name) and func.id == "log_event" and len(node.args) > 1:
            yield node.lineno, node.args[1]


def test_every_log_call_names_an_event():
    """No prose events in obrelay: the message is a literal event name, fields carry the rest."""
    assert any(p.name == "relay.py" for p in CHECKED)          # the walk found the package
    bad, seen = [], 0
    for path in CHECKED:
        for line, arg in _log_calls(ast.parse(path.read_text(), str(path))):
            seen += 1
            named = isinstance(arg, ast.Constant) and isinstance(arg.value, str) \
                and EVENT_NAME.fullmatch(arg.value)
            if not named and path.name != "logs.py":
                bad.append(f"{path.relative_to(ROOT)}:{line}: {ast.unparse(arg)}")
    assert seen >= 20, seen                                     # the calls were found at all
    assert not bad, "log calls without an event name:\n" + "\n".join(bad)


def test_text_line_is_an_event_with_fields():
    stream = _capture("text")
    logs.log_event(logging.getLogger("obrelay"), "stream_updated", stream="OB_x",
                   subjects="ob.x.>", max_msgs_per_subject=1)
    line = stream.getvalue().rstrip("\n")
    assert TEXT_LINE.fullmatch(line), line
    assert line.endswith(" INFO obrelay stream_updated stream=OB_x subjects=ob.x.> "
                         "max_msgs_per_subject=1")


def test_json_line_parses_with_its_fields():
    stream = _capture("json")
    logs.log_event(logging.getLogger("obrelay"), "nats_retrying", level=logging.WARNING,
                   error="refused", level_hint=3)
    (line,) = stream.getvalue().splitlines()
    out = json.loads(line)
    assert out["event"] == "nats_retrying" and out["level"] == "warning"
    assert out["logger"] == "obrelay" and out["error"] == "refused" and out["level_hint"] == 3
    assert out["ts"].endswith("Z") and isinstance(out["pid"], int)


HOSTILE = "a\x1b[31mred\r\nINFO forged=1\x00\x7f\x9b\u2028\u202e\\x1b\"q\" \udcff"


def test_text_escapes_every_control_character_of_message_and_fields():
    stream = _capture("text")
    logging.getLogger("obrelay").warning(HOSTILE)
    logs.log_event(logging.getLogger("obrelay"), "nats_error", error=HOSTILE)
    text = stream.getvalue()
    assert text.count("\n") == 2                      # two records, two lines, no forged one
    assert not re.search("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u202e\ud800-\udfff]", text)
    field = text.splitlines()[1].split(" error=", 1)[1]
    assert field.startswith('"') and field.endswith('"')
    # Unambiguous: the escaped ESC and the literal text `\x1b` in the value differ.
    assert "\\x1b[31m" in field and "\\\\x1b" in field and '\\"q\\"' in field


def test_a_traceback_cannot_forge_a_record():
    stream = _capture("text")
    try:
        raise ValueError("boom\n2026-01-01T00:00:00.000Z ERROR obrelay forged")
    except ValueError:
        logging.getLogger("obrelay").exception("relay_failed")
    first, *rest = stream.getvalue().splitlines()
    assert " ERROR obrelay relay_failed" in first
    assert rest and all(line.startswith("    ") for line in rest)


def test_json_stays_valid_and_exact_with_hostile_text():
    stream = _capture("json")
    logs.log_event(logging.getLogger("obrelay"), "nats_error", error=HOSTILE)
    (line,) = stream.getvalue().splitlines()
    assert not re.search("[\x00-\x1f\x7f-\x9f\u2028\u202e\ud800-\udfff]", line)
    line.encode("utf-8")                              # a line any collector can take
    out = json.loads(line)
    assert out["error"] == HOSTILE.replace("\udcff", "\\udcff")   # exact but the lone surrogate


def test_setup_refuses_an_unknown_format_or_level():
    for args in (("yaml", "info"), ("text", "loud")):
        try:
            logs.setup(*args, stream=io.StringIO())
        except ValueError as exc:
            assert args[0] in str(exc) or args[1] in str(exc)
        else:
            raise AssertionError(f"setup{args} accepted")


def test_a_relay_logs_json_lines_from_start_to_stop(nats_server, observer):
    """The real command with --log-format json: every line it writes is one JSON event."""
    with RelayProcess(observer, nats_server.url, "--name", unique_name("j"), "--log-format",
                      "json", "--stats-s", "0.2", workdir=observer.workdir) as relay:
        wait_until(lambda: '"event":"relay_stats"' in relay.log_text(), WAIT_S, "a stats line")
        assert relay.stop() == 0, relay.log_text()
    events = [json.loads(line) for line in relay.log_text().splitlines()]
    names = [e["event"] for e in events]
    for name in ("nats_connected", "stream_created", "relay_started", "observer_attached",
                 "relay_stats", "relay_stopping"):
        assert name in names, names
    started = events[names.index("relay_started")]
    assert started["incarnation"] > 0 and started["subjects"].endswith(".>")
    stopping = events[names.index("relay_stopping")]
    assert stopping["books"] > 0 and "published" in stopping and "coalesced" in stopping
