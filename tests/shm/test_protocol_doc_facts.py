"""docs/PROTOCOL.md is the specification; these tests hold the implementation to its facts.

Each test reads the document itself (its constants table, its size formulas, its message and
error tables, its byte examples) and compares it with what the code does, so neither can change
without the other. tests/shm/test_shm_layout_doc.py does the same for the layout tables' rows.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

from obclient import client as obclient_client
from obproto import updates as obclient_updates
from observer.process import supervisor
from observer.server import control, protocol as server_protocol
from observer.server import transport
from obproto import framing, latch, layout
from obproto import messages as m

DOC = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"


def doc_text() -> str:
    return DOC.read_text()


def section(title: str) -> str:
    """The text of the section whose heading is `title`, up to the next heading."""
    text = doc_text()
    match = re.search(rf"^#+ {re.escape(title)}\n(.*?)(?=^#+ )", text + "\n# end", re.M | re.S)
    assert match, f"docs/PROTOCOL.md has no section {title!r}"
    return match.group(1)


def table_rows(text: str) -> list[list[str]]:
    """Cells of every table row in `text`, separators and header rows included."""
    return [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in text.splitlines() if line.startswith("|")]


# -- the constants table ----------------------------------------------------------------------

IMPLEMENTED = {
    "PROTOCOL_VERSION": m.PROTOCOL_VERSION,
    "PROTOCOL_VERSION_MIN": m.PROTOCOL_VERSION_MIN,
    "REQUEST_BYTES_MAX": m.REQUEST_BYTES_MAX,
    "REPLY_BYTES_MAX": m.REPLY_BYTES_MAX,
    "NAME_BYTES_MAX": m.NAME_BYTES_MAX,
    "NAMES_MAX": m.NAMES_MAX,
    "TEXT_BYTES_MAX": m.TEXT_BYTES_MAX,
    "UPDATES_BATCH_MAX": m.UPDATES_BATCH_MAX,
    "SNAPSHOT_DEPTH_MAX": m.SNAPSHOT_DEPTH_MAX,
    "QUEUE_RECORDS_MAX": server_protocol.QUEUE_RECORDS_MAX,
    "HELLO_TIMEOUT_S": control.HELLO_TIMEOUT_S,
    "IDLE_S_MIN": m.IDLE_S_MIN,
    "PING_AFTER_IDLE_FRACTION": m.PING_AFTER_IDLE_FRACTION,
    "FDS_MAX": obclient_client.FDS_MAX,
    "MAGIC": layout.MAGIC,
    "LAYOUT_VERSION": layout.LAYOUT_VERSION,
    "LAYOUT_HASH": layout.LAYOUT_HASH,
    "ALIGN_BYTES": layout.ALIGN_BYTES,
    "HEADER_BYTES": layout.HEADER.itemsize,
    "BOOK_DESC_BYTES": layout.BOOK_DESC.itemsize,
    "BOOK_STATS_BYTES": layout.BOOK_STATS.itemsize,
    "SHARD_BYTES": layout.SHARD.itemsize,
    "COPY_HEAD_BYTES": layout.COPY_HEAD.itemsize,
    "SLOT_COPIES_OFFSET": layout.slot_dtype(1).fields["copies"][1],
    "RING_RECORD_BYTES": layout.RING_RECORD.itemsize,
    "BOOKS_MAX": layout.BOOKS_MAX,
    "SHARDS_MAX": layout.SHARDS_MAX,
    "DEPTH_MAX_LIMIT": layout.DEPTH_MAX_LIMIT,
    "RING_RECORDS_MIN": layout.RING_RECORDS_MIN,
    "RING_RECORDS_MAX": layout.RING_RECORDS_MAX,
    "STATE_LIVE": layout.STATE_LIVE,
    "STATE_CLOSED": layout.STATE_CLOSED,
    "FLAG_STALE": layout.FLAG_STALE,
    "FLAG_LAGGING": layout.FLAG_LAGGING,
    "FLAG_PUBLISHED": layout.FLAG_PUBLISHED,
    "KIND_UPDATE": layout.KIND_UPDATE,
    "KIND_STALE": layout.KIND_STALE,
    "KIND_RESYNC": layout.KIND_RESYNC,
    "LATCH_RETRIES_MAX": latch.LATCH_RETRIES_MAX,
    "HEARTBEAT_PERIOD_S": supervisor.HEARTBEAT_PERIOD_S,
    "STALE_AFTER_S": obclient_client.STALE_AFTER_S,
    "HEARTBEATS_MISSED_MAX": obclient_client.HEARTBEATS_MISSED_MAX,
    "LIVENESS_CHECK_S": obclient_client.LIVENESS_CHECK_S,
    "WAKE_AHEAD_SPIN_MAX_S": obclient_updates.WAKE_AHEAD_SPIN_MAX_NS / 1e9,
}


def documented_constants() -> dict[str, int | float]:
    out = {}
    for cells in table_rows(section("Constants")):
        name = cells[0].strip("`")
        if not re.fullmatch(r"[A-Z][A-Z0-9_]+", name):
            continue                                     # the header row
        value = cells[1]
        out[name] = int(value, 16) if value.startswith("0x") else (
            float(value) if "." in value else int(value))
    return out


def test_every_documented_constant_is_the_implementations():
    documented = documented_constants()
    assert sorted(documented) == sorted(IMPLEMENTED), "a constant documented but not checked, " \
                                                      "or checked but not documented"
    for name, value in documented.items():
        assert value == IMPLEMENTED[name], f"{name}: the doc says {value}, the code {IMPLEMENTED[name]}"


def test_the_fd_limit_is_the_servers_too():
    assert transport.FDS_PER_MESSAGE_MAX == documented_constants()["FDS_MAX"]


# -- the size formulas ---------------------------------------------------------------------------

def documented_formulas():
    block = re.search(r"```text\n(.*?)```", section("Sizes a reader checks"), re.S).group(1)
    lines = [line.split("=", 1) for line in block.strip().splitlines()]
    define, *rest = lines
    assert define[0].strip() == "align64(n)"
    align_expr = define[1].strip().replace("/", "//")
    align64 = eval(f"lambda n: {align_expr}")            # noqa: S307 - our own document
    return align64, [(name.strip(), expr.strip().replace("/", "//")) for name, expr in rest]


@pytest.mark.parametrize("books_n,shards_n,depth_max,ring_records", [
    (1, 1, 1, 16), (2, 1, 10, 1024), (7, 3, 25, 16384), (300, 8, 1000, 1 << 14),
    (65536, 256, 4096, 1 << 24), (5, 2, 3, 32)])
def test_the_documented_formulas_give_the_implemented_geometry(books_n, shards_n, depth_max,
                                                                 ring_records):
    align64, formulas = documented_formulas()
    values = {"books_n": books_n, "shards_n": shards_n, "depth_max": depth_max,
              "ring_records": ring_records, "align64": align64}
    for name, expr in formulas:
        values[name] = eval(expr, {"__builtins__": {}}, values)   # noqa: S307
    planned = layout.plan_geometry(books_n, shards_n, depth_max, ring_records)
    for name in planned._fields:
        assert values[name] == getattr(planned, name), name
    assert values["copy_bytes"] == layout.copy_dtype(depth_max).itemsize


def _header(geometry, **changes) -> np.ndarray:
    head = np.zeros(1, layout.HEADER)
    for name in geometry._fields:
        head[0][name] = getattr(geometry, name)
    values = {"magic": layout.MAGIC, "layout_version": layout.LAYOUT_VERSION,
              "header_bytes": layout.HEADER.itemsize, "layout_hash": layout.LAYOUT_HASH,
              **changes}
    for name, value in values.items():
        head[0][name] = value
    return head


@pytest.mark.parametrize("changes,message", [
    ({"magic": 1}, "bad magic"), ({"layout_version": 9}, "layout version 9"),
    ({"header_bytes": 128}, "header_bytes 128"), ({"layout_hash": 5}, "layout hash"),
    ({"ring_records": 24}, "not a power of two"), ({"ring_bytes": 64}, "geometry"),
    ({"slots_offset": 0}, "geometry")])
def test_the_python_reader_refuses_what_the_doc_says_to_refuse(changes, message):
    geometry = layout.plan_geometry(2, 1, 4, 16)
    buf = bytearray(geometry.segment_bytes)
    buf[:layout.HEADER.itemsize] = _header(geometry, **changes).tobytes()
    with pytest.raises(layout.LayoutError, match=message):
        layout.check_header(buf, len(buf))
    buf[:layout.HEADER.itemsize] = _header(geometry).tobytes()
    assert layout.check_header(buf, len(buf)) == geometry
    with pytest.raises(layout.LayoutError, match="mapping has only"):
        layout.check_header(buf[:-64], len(buf) - 64)


# -- messages, errors and byte examples -----------------------------------------------------

def test_error_codes_table_is_the_implementations():
    rows = [cells for cells in table_rows(section("Errors and misbehaving clients"))
            if cells[0].isdigit()]
    assert {int(cells[0]): cells[1] for cells in rows} == m.ErrorCode.NAMES
    closing = {int(cells[0]) for cells in rows if cells[3] == "closed"}
    assert m.ErrorCode.REFUSALS <= closing


@pytest.mark.parametrize("heading,union", [("Requests (client to server)", m.REQUESTS),
                                           ("Replies (server to client)", m.REPLIES)])
def test_message_tables_list_the_fields_in_wire_order(heading, union):
    rows = {cells[0].strip("`"): cells[1] for cells in table_rows(section(heading))
            if cells[0].startswith("`")}
    assert sorted(rows) == sorted(union)
    for type_name, cls in union.items():
        fields = [f.name for f in dataclasses.fields(cls)][1:]           # after req_id
        documented = re.findall(r"`(\w+):", rows[type_name])
        assert documented == fields, type_name


def _doc_hex(frame: bytes) -> str:
    return " ".join(f"{b:02x}" for b in frame[:4]) + " | " + " ".join(f"{b:02x}" for b in frame[4:])


def test_the_byte_examples_are_what_the_codec_writes():
    codec = m.client_codec()
    examples = [m.Hello(1, 1, 1, "demo", True), m.Describe(2, "BTCUSD")]
    text = " ".join(doc_text().split())                 # examples may wrap across lines
    for msg in examples:
        frame = framing.encode_frame(codec.encode(msg), m.REQUEST_BYTES_MAX)
        assert f"`{_doc_hex(frame)}`" in text, msg
    assert f"`{_doc_hex(m.PING_FRAME)}`" in text


def test_the_doc_names_no_python_file_as_its_source_of_truth():
    text = doc_text()
    assert "This document is the specification" in text
    assert not re.search(r"`client/obproto/\w+\.py`", text)
    assert "(`/tmp`)" not in text
    assert "CLOCK_REALTIME" in section("Time")
