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
    logs.setup("text", "warning")  # leave the root logger quiet for other tests


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
    logs.setup("text", "warning")  # leave the root logger quiet for other tests


# Every kind of character a peer could use to forge or hide a line, or to drive a terminal.
HOSTILE = "a\x1b[2J\rb\nc\x00d\x7fe\x85f\x9bg\u2028h\u202ei\u2066j\udcffk"
HOSTILE_ESCAPED = r"a\x1b[2J\rb\nc\x00d\x7fe\x85f\x9bg\u2028h\u202ei\u2066j\udcffk"
UNSAFE_CHARS = set("\x1b\r\n\x00\x7f\x85\x9b\u2028\u202e\u2066\udcff")


def test_text_escapes_every_control_character_in_fields_and_message():
    stream = _capture("text")
    log = logging.getLogger("server")
    logs.log_event(log, "client_disconnected", client=HOSTILE, reason="ok")
    log.warning("feed said: %s", HOSTILE)
    logs.setup("text", "warning")
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
    logs.setup("text", "warning")
    assert stream.getvalue().rstrip("\n").endswith(
        r' e typed="x\\x1by" real="x\x1by" q="say \"hi\""')


def test_a_traceback_cannot_forge_a_record():
    stream = _capture("text")
    try:
        raise ValueError("bad\n2026-01-01T00:00:00.000Z INFO forged line\x1b[0m")
    except ValueError:
        logging.getLogger("server").exception("request failed")
    logs.setup("text", "warning")
    lines = stream.getvalue().rstrip("\n").split("\n")
    assert lines[0].endswith(" ERROR server request failed")
    assert all(line.startswith("    ") for line in lines[1:])      # only records start a line
    assert "\x1b" not in stream.getvalue()


def test_json_stays_valid_and_exact_with_hostile_text():
    stream = _capture("json")
    log = logging.getLogger("server")
    logs.log_event(log, "client_disconnected", client=HOSTILE, nested={"k": [HOSTILE]})
    log.warning("feed said: %s", HOSTILE)
    logs.setup("text", "warning")
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
    logs.setup("text", "warning")
    line = stream.getvalue().strip()
    assert not set("\x85\x9b\u2028\u202e").intersection(line)
    assert orjson.loads(line)["v"] == text
