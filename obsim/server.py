"""The simulator process: one TLS port per venue, one control port, one ticker, one loop.

Everything runs on one asyncio loop in one thread, so venues, books and connections are plain
objects with no locks. Three periodic things drive it:
- the ticker (every `tick_s`, 5 ms by default): each venue consumes the events due since the
  last tick (`rate` per symbol per second) into its books and queues rendered frames, then
  every connection gets one `transport.write` of its queued frames;
- the housekeeper (every 100 ms): keepalives, heartbeats, idle and deadline checks;
- the `websockets` servers: handshakes, client messages, control frames, REST via
  `process_request` (a plain GET on a non-WebSocket path is answered there and closed).

Discussion: ticks batch writes, which is what lets one Python process send well over 100k
messages a second; the price is that a frame waits at most one tick (5 ms) before it leaves.
Event-time fields are stamped when the event is rendered, in the same tick as the write.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

from websockets.asyncio.server import serve

from obsim.control import Control
from obsim.venue import Venue

HOUSEKEEP_EVERY_S = 0.1
log = logging.getLogger("obsim")


class Sim:
    def __init__(self, opts, venues: dict[str, Venue], ssl_ctx, ca_file: str) -> None:
        self.opts = opts
        self.venues = venues
        self.ssl_ctx = ssl_ctx
        self.ca_file = ca_file
        self.servers = []
        self.tasks: list[asyncio.Task] = []
        self.control = Control(self)
        self.control_port = 0
        self.ticks = 0
        self.started_s = time.monotonic()

    async def start(self) -> None:
        for venue in self.venues.values():
            server = await self._serve(venue.serve, venue.http)
            venue.port = server.sockets[0].getsockname()[1]
        server = await self._serve(self._refuse_ws, self.control.handle)
        self.control_port = server.sockets[0].getsockname()[1]
        self.tasks.append(asyncio.ensure_future(self._ticker()))
        self.tasks.append(asyncio.ensure_future(self._housekeeper()))

    async def _serve(self, handler, process_request):
        server = await serve(handler, "127.0.0.1", 0, ssl=self.ssl_ctx, process_request=process_request,
                             compression=None, ping_interval=None, close_timeout=2,
                             max_size=self.opts.client_message_bytes_max, max_queue=64)
        self.servers.append(server)
        return server

    async def _refuse_ws(self, ws) -> None:
        await ws.close(1008, "the control port speaks HTTPS only")

    def endpoints(self) -> dict:
        exchanges = {}
        for name, venue in self.venues.items():
            exchanges[name] = {
                "ws_url": f"wss://127.0.0.1:{venue.port}{venue.ws_path}",
                "rest_url": f"https://127.0.0.1:{venue.port}",
                "symbols": list(venue.markets),
            }
        return {
            "exchanges": exchanges,
            "ca_file": self.ca_file,
            "control_url": f"https://127.0.0.1:{self.control_port}",
            "pid": os.getpid(),
        }

    async def _ticker(self) -> None:
        last_s = time.monotonic()
        while True:
            await asyncio.sleep(self.opts.tick_s)
            now_s = time.monotonic()
            dt_s, last_s = now_s - last_s, now_s
            self.ticks += 1
            for venue in self.venues.values():
                try:
                    venue.tick(now_s, dt_s)
                except Exception:
                    log.exception("%s: tick failed; stream paused", venue.name)
                    venue.paused = True
                venue.flush(now_s)

    async def _housekeeper(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEP_EVERY_S)
            now_s = time.monotonic()
            for venue in self.venues.values():
                try:
                    venue.housekeep(now_s)
                except Exception:
                    log.exception("%s: housekeeping failed", venue.name)
                venue.flush(now_s)

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for venue in self.venues.values():
            for conn in list(venue.conns):
                conn.abort("simulator stopping")
        for server in self.servers:
            server.close(close_connections=False)
        for server in self.servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 2.0)
            except asyncio.TimeoutError:
                log.warning("a server did not close within 2 s")
