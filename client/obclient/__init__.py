"""obclient: the library strategy processes link to read observer's books.

Imports only `obproto`, numpy and msgpack: never `observer`, never greenlet.

    import obclient
    client = obclient.connect()                 # $OBSERVER_SOCKET or the default path
    book = client.book("BTCUSD")                # or "kraken:BTCUSD" when several venues have it
    snap = book.snapshot(depth=10)              # consistent copy: snap.bids, snap.asks, snap.stale
    for update in client.updates(["BTCUSD"], timeout_s=1.0):
        ...                                     # ring records; survives observer restarts
"""

from obclient.client import (Book, BookNotFound, Client, IncompatibleObserver,
                             ObserverUnavailable, RequestFailed, ServerRefused, connect)
from obproto.segment import BookInfo, SegmentReader
from obproto.snapshot import BookSnapshot, Update

__all__ = ["Book", "BookInfo", "BookNotFound", "BookSnapshot", "Client", "IncompatibleObserver",
           "ObserverUnavailable", "RequestFailed", "SegmentReader", "ServerRefused", "Update",
           "connect"]
