"""Binance USD-M futures: the spot machinery with the `pu` chain (docs/EXCHANGES.md section 1b).

Update ids on futures are not contiguous (previous `u` 600917, next `U` 601193), so the spot
rule `U == u + 1` would see a gap on every event. Instead each event names the final id of the
previous one (`pu`), and continuity is `pu == book.update_id`. Bridging after a snapshot is also
one off from spot: events with `u < lastUpdateId` are dropped and the first applied one must have
`U <= lastUpdateId <= u` (no +1). Everything else (buffering, budgeted REST snapshots,
refetch on a gap while the WebSocket stays) is BinanceAdapter's.
"""

from observer.feeds.actions import FeedProtocolError
from observer.feeds.binance import BinanceAdapter


class BinanceFuturesAdapter(BinanceAdapter):
    exchange = "binance-futures"
    ws_url_default = "wss://fstream.binance.com"
    rest_url_default = "https://fapi.binance.com"
    depth_path = "/fapi/v1/depth"
    weight_per_minute = 2400
    depth_tiers = ((50, 2), (100, 5), (500, 10), (1000, 20))  # limits 5..1000 only

    def on_depth(self, conn_id, event, data):
        if type(event.get("pu")) is not int:
            raise FeedProtocolError("binance-futures: depth event without an integer pu")
        super().on_depth(conn_id, event, data)

    def first_u_min(self, book):
        return book.update_id  # drop u < lastUpdateId

    def accepts_first(self, update_id, event):
        # Or the event right after the snapshot (`pu == lastUpdateId`): the snapshot's own last
        # event never reached us (sent before this connection subscribed, or not yet read when
        # the snapshot was taken in), and the chain proves the next one follows it. Refusing it
        # resynced every such book at its first event (and after a held stream, instead of
        # publishing it lagging).
        return event["U"] <= update_id <= event["u"] or event["pu"] == update_id

    def continues(self, update_id, event):
        return event["pu"] == update_id

    def snapshot_too_old(self, last_update_id, first_event):
        return last_update_id < first_event["U"]
