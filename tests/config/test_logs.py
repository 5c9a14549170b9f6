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
