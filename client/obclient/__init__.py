"""obclient: the library strategy processes link to read observer's books.

Imports only `obproto`, numpy and msgpack: never `observer`, never greenlet. The guide and API
reference is docs/CLIENT.md.

    import obclient
    client = obclient.connect()                 # $OBSERVER_SOCKET or the default path
    book = client.book("kraken:BTC/USD")        # or "BTCUSD" when only one venue has it
    snap = book.snapshot(depth=10)              # consistent copy: snap.bids, snap.asks, snap.stale
    for update in client.updates([book.name], idle_timeout_s=1.0):
        ...                                     # update.name, update.kind; survives restarts
    async for update in client.aupdates([book.name]):   # the same, for asyncio
        ...
"""

from obclient.client import (LIVENESS_CHECK_S, AmbiguousBook, Book, BookNotFound, Client,
                             IncompatibleObserver, ObserverUnavailable, RequestFailed,
                             ServerRefused, connect)
from obproto.segment import BookInfo, SegmentReader
from obproto.snapshot import (KIND_RESYNC, KIND_STALE, KIND_UPDATE, BookSnapshot, Kind, Update,
                               check_depth)

__all__ = ["AmbiguousBook", "Book", "BookInfo", "BookNotFound", "BookSnapshot", "Client",
           "IncompatibleObserver", "KIND_RESYNC", "LIVENESS_CHECK_S", "KIND_STALE", "KIND_UPDATE", "Kind",
           "ObserverUnavailable", "RequestFailed", "SegmentReader", "ServerRefused", "Update",
           "check_depth", "connect"]
