"""Fixtures for the shm tests: segments with names unique to the run, always removed."""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # shm_doubles, shm_reader_proc

from observer.shm import Segment  # noqa: E402
from proto.layout import BookDesc  # noqa: E402

SHM_DIR = Path("/dev/shm")


@pytest.fixture
def segment_name():
    name = f"/obtest-shm-{os.getpid()}-{secrets.token_hex(4)}"
    yield name
    leftover = SHM_DIR / name.lstrip("/")
    if leftover.exists():
        leftover.unlink()
        pytest.fail(f"test left segment {name} behind")


@pytest.fixture
def make_segment(segment_name):
    """Create segments (suffix-distinguished) that are closed and unlinked after the test."""
    made: list[Segment] = []

    def make(book_descs=None, shards_n=1, depth_max=8, ring_records=64, suffix="", **kw):
        if book_descs is None:
            book_descs = [BookDesc("binance", "BTCUSDT", "btcusdt", 0)]
        segment = Segment.create(segment_name + suffix, book_descs, shards_n, depth_max,
                                 ring_records, **kw)
        made.append(segment)
        return segment

    yield make
    for segment in made:
        segment.close()
        segment.unlink()
