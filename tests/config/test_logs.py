import io
import logging

import orjson

from observer.telemetry import logs


def _capture(fmt):
    stream = io.StringIO()
    logs.setup(fmt, "info", stream=stream)
    return stream


def test_text_line_has_event_and_fields():
    stream = _capture("text")
    log = logging.getLogger("feeds.kraken")
    logs.log_event(log, "resync", level=logging.WARNING, book="kraken:BTCUSD", reason="checksum mismatch")
    logs.log_event(log, "hidden", level=logging.DEBUG)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert " WARNING feeds.kraken resync book=kraken:BTCUSD reason=\"checksum mismatch\"" in lines[0]


def test_json_line_parses():
    stream = _capture("json")
    log = logging.getLogger("server")
    logs.log_event(log, "client_connect", pid=123, uid=1000)
    log.info("plain message")
    first, second = (orjson.loads(line) for line in stream.getvalue().splitlines())
    assert first["event"] == "client_connect" and first["level"] == "info"
    assert first["uid"] == 1000 and first["logger"] == "server"
    assert second["event"] == "plain message"


def test_static_fields_tag_every_line_unless_the_event_sets_them():
    stream = io.StringIO()
    logs.setup("json", "info", stream=stream, fields={"shard": 1})
    log = logging.getLogger("observer.feeds")
    logs.log_event(log, "book_stale", book="kraken:BTCUSD", reason="gap")
    log.info("plain message")
    logs.log_event(log, "shard_started", shard=0)
    first, second, third = (orjson.loads(line) for line in stream.getvalue().splitlines())
    assert first["shard"] == 1 and first["reason"] == "gap"
    assert second["shard"] == 1 and second["event"] == "plain message"
    assert third["shard"] == 0


# Every kind of character a peer could use to forge or hide a line, or to drive a terminal.
HOSTILE = "a\x1b[2J\rb\nc\x00d\x7fe\x85f\x9bg\u2028h\u202ei\u2066j\udcffk"
HOSTILE_ESCAPED = r"a\x1b[2J\rb\nc\x00d\x7fe\x85f\x9bg\u2028h\u202ei\u2066j\udcffk"
UNSAFE_CHARS = set("\x1b\r\n\x00\x7f\x85\x9b\u2028\u202e\u2066\udcff")


def test_text_escapes_every_control_character_in_fields_and_message():
    stream = _capture("text")
    log = logging.getLogger("server")
    logs.log_event(log, "client_disconnected", client=HOSTILE, reason="ok")
    log.warning("feed said: %s", HOSTILE)
    first, second, end = stream.getvalue().split("\n")       # two records, two lines
    assert end == ""
    assert not UNSAFE_CHARS.intersection(first + second)
    assert first.endswith(f' client_disconnected client="{HOSTILE_ESCAPED}" reason=ok')
    assert second.endswith(f" WARNING server feed said: {HOSTILE_ESCAPED}")


def test_text_escapes_are_unambiguous():
    """A peer that writes the escape's own text gets its backslash doubled, so `\\x1b` in the
    log is always an ESC character and never four typed characters."""
    stream = _capture("text")
    logs.log_event(logging.getLogger("server"), "e", typed="x\\x1by", real="x\x1by", q='say "hi"')
    assert stream.getvalue().rstrip("\n").endswith(
        r' e typed="x\\x1by" real="x\x1by" q="say \"hi\""')


def test_a_traceback_cannot_forge_a_record():
    stream = _capture("text")
    try:
        raise ValueError("bad\n2026-01-01T00:00:00.000Z INFO forged line\x1b[0m")
    except ValueError:
        logging.getLogger("server").exception("request failed")
    lines = stream.getvalue().rstrip("\n").split("\n")
    assert lines[0].endswith(" ERROR server request failed")
    assert all(line.startswith("    ") for line in lines[1:])      # only records start a line
    assert "\x1b" not in stream.getvalue()


def test_json_stays_valid_and_exact_with_hostile_text():
    stream = _capture("json")
    log = logging.getLogger("server")
    logs.log_event(log, "client_disconnected", client=HOSTILE, nested={"k": [HOSTILE]})
    log.warning("feed said: %s", HOSTILE)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2                  # a lone surrogate used to fail the whole line
    for line in lines:
        assert not UNSAFE_CHARS.intersection(line)
    first, second = (orjson.loads(line) for line in lines)
    exact = HOSTILE.replace("\udcff", "\\udcff")   # the one thing JSON as UTF-8 cannot hold
    assert first["client"] == exact
    assert first["nested"] == {"k": [exact]}
    assert second["event"] == "feed said: " + exact


def test_json_keeps_c1_and_separators_exact():
    stream = _capture("json")
    text = "x\x85\x9b\u2028\u202ey"
    logs.log_event(logging.getLogger("server"), "e", v=text)
    line = stream.getvalue().strip()
    assert not set("\x85\x9b\u2028\u202e").intersection(line)
    assert orjson.loads(line)["v"] == text


# -- every line an event name ---------------------------------------------------------------------

import ast  # noqa: E402
import re  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EVENT_NAME = re.compile(r"[a-z][a-z0-9_]*")
LOG_METHODS = {"debug", "info", "warning", "error", "exception", "critical"}
# The server and its loop: every line an event (obsim, a test tool with its own stdlib format,
# is left out; so is obrelay, whose lines are still prose).
CHECKED = [p for p in sorted((ROOT / "observer").rglob("*.py"))
           if "sim" not in p.relative_to(ROOT).parts]


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
            if not (isinstance(node.args[1], ast.Name) and node.args[1].id == "event"):
                yield node.lineno, node.args[1]      # `event`: a parameter, checked at its callers
        elif isinstance(func, ast.Attribute) and func.attr == "log_once" and len(node.args) > 2:
            yield node.lineno, node.args[2]          # the feed session's log_once(conn, key, event)


def test_every_log_call_names_an_event():
    """No prose events: the message is a literal event name (fields carry the rest)."""
    bad = []
    for path in CHECKED:
        for line, arg in _log_calls(ast.parse(path.read_text(), str(path))):
            choices = [arg.body, arg.orelse] if isinstance(arg, ast.IfExp) else [arg]
            named = all(isinstance(c, ast.Constant) and isinstance(c.value, str)
                        and EVENT_NAME.fullmatch(c.value) for c in choices)
            if not named and path.name != "logs.py":
                bad.append(f"{path.relative_to(ROOT)}:{line}: {ast.unparse(arg)}")
    assert not bad, "log calls without an event name:\n" + "\n".join(bad)


def test_a_plain_logging_call_with_a_dict_is_an_event_with_fields():
    stream = _capture("json")
    logging.getLogger("observer.loom").warning("fiber_stalled", {"fiber": "f", "ran_ms": 52})
    (line,) = (orjson.loads(text) for text in stream.getvalue().splitlines())
    assert line["event"] == "fiber_stalled" and line["fiber"] == "f" and line["ran_ms"] == 52
    stream = _capture("text")
    logging.getLogger("observer.loom").warning("fiber_stalled", {"fiber": "a b"})
    assert stream.getvalue().rstrip().endswith('WARNING observer.loom fiber_stalled fiber="a b"')
