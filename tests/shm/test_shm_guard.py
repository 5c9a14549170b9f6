"""Clients cannot write (C8), and a segment of another layout is refused clearly (C2)."""

from __future__ import annotations

import mmap
import os

import numpy as np
import pytest

from obproto.segment import SegmentReader
from obproto import layout
from obproto.layout import LayoutError
from shm_doubles import BookDouble


@pytest.fixture
def published(make_segment):
    segment = make_segment()
    book = BookDouble()
    book.set([(100, 1)], [(101, 2)], 1)
    segment.writer(0).publish(0, book)
    fd = segment.reader_fd()
    yield segment, fd
    os.close(fd)


def test_client_views_are_read_only(published):
    segment, fd = published
    with SegmentReader(fd) as reader:
        with pytest.raises(TypeError):
            reader.map[0] = 1
        with pytest.raises(TypeError):
            reader._mv[0] = 1
        with pytest.raises(TypeError):
            reader._words[0] = 1
        bid_px = reader._copy_views(0)[0][0]
        with pytest.raises(ValueError, match="read-only"):
            bid_px[0] = 7
        snap = reader.snapshot(0)
        snap.bid_px[0] = 7  # a snapshot is the caller's own copy
        assert reader.snapshot(0).bid_px[0] == 100


def test_client_fd_cannot_be_mapped_or_written(published):
    segment, fd = published
    size = os.fstat(fd).st_size
    with pytest.raises(PermissionError):
        mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    with pytest.raises(OSError):
        os.write(fd, b"x")
    with pytest.raises(OSError):
        os.ftruncate(fd, 0)  # nor shrink the segment under other readers (SIGBUS)
    assert os.fstat(fd).st_size == size


def corrupt(segment, field: str, value) -> None:
    np.frombuffer(segment.map, layout.HEADER, count=1)[0][field] = value


@pytest.mark.parametrize("field, value, message", [
    ("magic", 0x1234, "bad magic"),
    ("layout_version", layout.LAYOUT_VERSION + 1, "layout version"),
    ("layout_hash", layout.LAYOUT_HASH ^ 1, "layout hash"),
    ("depth_max", 9, "geometry"),
    ("segment_bytes", 1 << 40, "geometry"),
])
def test_mismatched_segment_refused(published, field, value, message):
    segment, fd = published
    corrupt(segment, field, value)
    with pytest.raises(LayoutError, match=message):
        SegmentReader(fd)


def test_foreign_or_short_segment_refused(segment_name):
    for size in (0, 64, 4096):
        fd = os.memfd_create(segment_name, os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            with pytest.raises(LayoutError, match="not an observer segment"):
                SegmentReader(fd)
        finally:
            os.close(fd)


def test_geometry_is_aligned():
    g = layout.plan_geometry(books_n=3, shards_n=2, depth_max=5, ring_records=16)
    for offset in (g.descs_offset, g.stats_offset, g.shards_offset, g.slots_offset,
                   g.slot_bytes, g.rings_offset, g.ring_bytes):
        assert offset % layout.ALIGN_BYTES == 0
    slot = layout.slot_dtype(5)
    assert slot.fields["seq"][1] == 0
    assert slot.fields["copies"][1] == 64  # the sequence word has its cache line
    copy = layout.copy_dtype(5)
    for name in ("bid_px", "bid_sz", "ask_px", "ask_sz"):
        assert copy.fields[name][1] % 8 == 0
    assert layout.RING_RECORD.fields["seq"][1] == 0
    assert layout.SHARD.fields["head"][1] == 0


def test_limits_are_named():
    with pytest.raises(LayoutError, match="DEPTH_MAX_LIMIT"):
        layout.plan_geometry(1, 1, layout.DEPTH_MAX_LIMIT + 1, 16)
    with pytest.raises(LayoutError, match="BOOKS_MAX"):
        layout.plan_geometry(0, 1, 1, 16)
