"""observer.shm: the segment writer (C2, C4, C5, C6, C9).

`Segment.create(...)` makes the segment (a memfd, sealed by `seal()`) and one eventfd per shard;
`segment.writer(shard_index)` returns the `ShardWriter` that publishes that shard's books.
The layout lives in `obproto.layout`, the store ordering in `obproto.latch`.
"""

from observer.shm.segment import Segment
from observer.shm.writer import BookStats, ShardWriter

__all__ = ["Segment", "ShardWriter", "BookStats"]
