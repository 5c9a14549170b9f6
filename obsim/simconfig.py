"""An observer configuration file that points feeds at a running obsim.

Why: `make run`, the end-to-end tests and bench/ingest.py all start obsim, read its one start-up
line (URLs per exchange, its CA file) and must then start a real observer on those endpoints
exactly as a user would, through `observer --config FILE` (C10). This writes that file.

obsim names Bybit's linear category `bybit-linear`; in the observer's configuration that is
`exchange = "bybit"` with `category = "linear"` (and its books are named `bybit-linear:...`).
"""

from __future__ import annotations

import json

from observer.config.settings import WITH_REST

OBSIM_EXCHANGE = {"bybit-linear": ("bybit", "linear")}


def feed_table(info: dict, sim_exchange: str, symbols=None, depth: int | None = None) -> str:
    """One `[[feed]]` table for `sim_exchange` as obsim serves it (all its symbols by default)."""
    served = info["exchanges"][sim_exchange]
    exchange, category = OBSIM_EXCHANGE.get(sim_exchange, (sim_exchange, None))
    lines = ["[[feed]]", f"exchange = {json.dumps(exchange)}",
             f"symbols = {json.dumps(list(symbols or served['symbols']))}",
             f"ws_url = {json.dumps(served['ws_url'])}",
             f"ca_file = {json.dumps(info['ca_file'])}"]
    if exchange in WITH_REST:           # obsim serves REST for every venue; only these use it
        lines.append(f"rest_url = {json.dumps(served['rest_url'])}")
    if category:
        lines.append(f"category = {json.dumps(category)}")
    if depth:
        lines.append(f"depth = {int(depth)}")
    return "\n".join(lines) + "\n"


def config_text(info: dict, feeds, *, name: str, depth: int = 50, lag_bound_ms: float = 1000.0,
                socket: str | None = None) -> str:
    """A whole config file. `feeds`: obsim exchange names, or (exchange, symbols) pairs."""
    head = ["[observer]", f"name = {json.dumps(name)}", f"depth = {int(depth)}",
            f"lag_bound_ms = {float(lag_bound_ms)}"]
    if socket:
        head.append(f"socket = {json.dumps(socket)}")
    parts = ["\n".join(head) + "\n"]
    for feed in feeds:
        sim_exchange, symbols = (feed, None) if isinstance(feed, str) else feed
        parts.append(feed_table(info, sim_exchange, symbols))
    return "\n".join(parts)


def write_config(path, info: dict, feeds, **observer_keys) -> str:
    text = config_text(info, feeds, **observer_keys)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return str(path)
