"""An observer fed by obsim from Kraken and Coinbase, for tests that need real venue names.

Kraken serves BTC/USD and ETH/USD, Coinbase BTC-USD: so `BTCUSD` is ambiguous (both venues),
`ETHUSD` is not (Kraken only), and each venue's native spelling differs from the normalised
one (`kraken:BTC/USD`, `coinbase:BTC-USD`), which is what name resolution must cope with.
"""

from __future__ import annotations

import contextlib
import os

from obsim.harness import Obsim
from obsim.simconfig import write_config
from kit.procs import ObserverProcess, unique_name

FEEDS = (("kraken", ["BTC/USD", "ETH/USD"]), ("coinbase", ["BTC-USD"]))
SIM_ARGS = ["--exchanges", ",".join(e for e, _ in FEEDS), "--rate", "20", "--depth", "50",
            "--seed", "7", *[a for e, s in FEEDS for a in ("--symbol", f"{e}={','.join(s)}")]]
READY_TIMEOUT_S = 120.0
BOOK_NAMES = ["coinbase:BTCUSD", "kraken:BTCUSD", "kraken:ETHUSD"]


@contextlib.contextmanager
def venue_observer():
    """obsim and an observer on its feeds; yields the ObserverProcess; stops both."""
    with Obsim(SIM_ARGS) as sim:
        obs = ObserverProcess(None, name=unique_name("venues"))
        try:
            config_path = os.path.join(obs.workdir, "observer.toml")
            write_config(config_path, sim.info, FEEDS, name=obs.name, depth=50)
            obs.args += ["--config", config_path]
            obs.start()
            obs.wait_ready(READY_TIMEOUT_S).close()
            yield obs
            assert obs.stop() == 0, obs.log_text()
        finally:
            obs.close()
