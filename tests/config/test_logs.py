import io
import logging

import orjson

from observer import logs


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
