"""docs/PROTOCOL.md describes the segment byte by byte; these tests keep it equal to proto."""

from __future__ import annotations

from pathlib import Path

import pytest

from obproto import layout

DOC = Path(__file__).resolve().parents[2] / "docs" / "PROTOCOL.md"

# Changing the layout is allowed; doing it silently is not. If this fails after a deliberate
# change: bump LAYOUT_VERSION, regenerate the tables in docs/PROTOCOL.md, update this value.
LAYOUT_HASH_V3 = 0x34CD096ECCB0B361  # v2 0xCA57EB364AD0E8ED (no wake_ahead, clients_n), v1 0xA360DB21F8A7C5F3


def test_layout_hash_is_pinned():
    assert layout.LAYOUT_VERSION == 3
    assert layout.LAYOUT_HASH == LAYOUT_HASH_V3


@pytest.mark.parametrize("dtype_name", ["HEADER", "BOOK_DESC", "BOOK_STATS", "SHARD",
                                        "COPY_HEAD", "RING_RECORD"])
def test_protocol_doc_tables_match_dtypes(dtype_name):
    text = DOC.read_text()
    dtype = getattr(layout, dtype_name)
    for name in dtype.names:
        t, offset = dtype.fields[name][:2]
        type_text = f"{t.subdtype[0].str}[{t.subdtype[1][0]}]" if t.subdtype else t.str
        row = f"| {offset} | {t.itemsize} | `{type_text}` | `{name}` |"
        assert row in text, f"docs/PROTOCOL.md lacks the {dtype_name} row {row}"


def test_protocol_doc_states_magic_and_hash():
    text = DOC.read_text()
    assert f"{layout.MAGIC:#018x}" in text
    assert f"{layout.LAYOUT_HASH:#018x}" in text
