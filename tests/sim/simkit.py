"""Shared helpers for the obsim tests: an independent little book, a client, waits.

The clients here are written from the exchanges' rules (docs/EXCHANGES.md) with the `websockets`
library and share no code with obsim (nor with observer.feeds / observer.book): they are a second,
independent reading of each protocol, so a test passing means two implementations agree.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from decimal import Decimal
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from obsim.harness import Obsim

RECORDINGS = Path(__file__).resolve().parents[1] / "data" / "recordings"   # in the repo
TEST_TIMEOUT_S = 60.0


def recordings_dir() -> Path:
    if not (RECORDINGS / "README.md").is_file():
        pytest.fail("tests/data/recordings is missing its README.md")
    return RECORDINGS.resolve()


def run(coro, timeout_s: float = TEST_TIMEOUT_S):
    async def bounded():
        return await asyncio.wait_for(coro, timeout_s)
    return asyncio.run(bounded())


def raw_json(text) -> dict:
    """JSON with numbers kept as their literal text (Kraken's trailing zeros matter)."""
    return json.loads(text, parse_float=str, parse_int=str)


async def open_ws(sim: Obsim, url: str, **kwargs):
    # max_queue=None: a test that stops reading one connection for a while (to watch another)
    # must still close it at once; with a bounded queue the client stops reading the socket and
    # its close waits out close_timeout behind unread frames.
    kwargs.setdefault("max_queue", None)
    return await connect(url, ssl=sim.ssl_context(), max_size=None, open_timeout=20, **kwargs)


async def recv_json(ws, timeout_s: float = 10.0, raw: bool = False):
    message = await asyncio.wait_for(ws.recv(), timeout_s)
    return raw_json(message) if raw else json.loads(message)


async def wait_for(predicate, timeout_s: float = 15.0, every_s: float = 0.05):
    """Wait until predicate() is true (a deadline for an event, not a timing assertion)."""
    deadline_s = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline_s:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(every_s)


class LittleBook:
    """An exact book keyed by Decimal price, keeping the wire text; 0 deletes."""

    def __init__(self, depth: int | None = None) -> None:
        self.sides = {"bid": {}, "ask": {}}
        self.depth = depth

    def clear(self) -> None:
        self.sides = {"bid": {}, "ask": {}}

    def set(self, side: str, price: str, size: str) -> None:
        key = Decimal(price)
        if Decimal(size) == 0:
            self.sides[side].pop(key, None)
        else:
            self.sides[side][key] = (price, size)

    def truncate(self) -> None:
        if self.depth is None:
            return
        for side in ("bid", "ask"):
            for key in sorted(self.sides[side], reverse=side == "bid")[self.depth:]:
                del self.sides[side][key]

    def top(self, side: str, n: int | None = None) -> list[list[str]]:
        keys = sorted(self.sides[side], reverse=side == "bid")[:n]
        return [list(self.sides[side][k]) for k in keys]

    def matches(self, true_book: dict, n: int) -> bool:
        return self.top("bid", n) == true_book["bids"][:n] and self.top("ask", n) == true_book["asks"][:n]


def unique_name(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{os.urandom(3).hex()}"


async def to_thread(fn, *args, **kwargs):
    return await asyncio.to_thread(fn, *args, **kwargs)
