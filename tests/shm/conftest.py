"""Fixtures for the shm tests: segments (memfds, labelled uniquely to the run), always closed."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # shm_doubles, shm_reader_proc

from observer.shm import Segment  # noqa: E402
from obproto.layout import BookDesc  # noqa: E402

@pytest.fixture
def segment_name():
    return f"obtest-shm-{os.getpid()}-{secrets.token_hex(4)}"


@pytest.fixture
def make_segment(segment_name):
    """Create segments (suffix-distinguished), sealed unless `sealed=False`, closed after the
    test."""
    made: list[Segment] = []

    def make(book_descs=None, shards_n=1, depth_max=8, ring_records=64, suffix="", sealed=True,
             **kw):
        if book_descs is None:
            book_descs = [BookDesc("binance", "BTCUSDT", "btcusdt", 0)]
        segment = Segment.create(segment_name + suffix, book_descs, shards_n, depth_max,
                                 ring_records, **kw)
        made.append(segment)
        if sealed:
            segment.seal()
        return segment

    yield make
    for segment in made:
        segment.close()
