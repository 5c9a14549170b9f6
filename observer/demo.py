"""`make run`: obsim, an observer fed by it from four venues, a live book, a clean stop.

What it does, in order:
1. starts obsim (the bundled exchange simulator) serving Binance spot, Kraken, OKX and Bybit on
   loopback over wss/https with its own self-signed CA;
2. writes an observer config file with one `[[feed]]` per venue pointing at obsim's URLs and CA
   (exactly what a user writes for a testnet or a proxy, C10) and starts `observer --config` as
   its own process on a socket in a private temp directory;
3. waits until every book is published live, then runs `obctl list` and `obctl snapshot
   BTCUSD` as a user would. Only Kraken serves BTC/USD here (the other venues trade USDT
   pairs), so `BTCUSD` names `kraken:BTCUSD` unambiguously;
4. stops the observer (SIGTERM) and obsim, and checks that nothing is left: the socket file,
   the config file and the temp directories are removed.
"""

from __future__ import annotations

import os
import subprocess
import sys

from observer.sim.harness import Obsim
from observer.simconfig import write_config
from observer.testing import ObserverProcess, unique_name

FEEDS = (("binance", ["BTCUSDT", "ETHUSDT"]), ("kraken", ["BTC/USD", "ETH/USD"]),
         ("okx", ["SOL-USDT"]), ("bybit", ["XRPUSDT"]))
SIM_ARGS = ["--exchanges", ",".join(e for e, _ in FEEDS), "--rate", "20", "--depth", "200",
            "--seed", "7", *[a for e, s in FEEDS for a in ("--symbol", f"{e}={','.join(s)}")]]
DEPTH = 10
READY_TIMEOUT_S = 90.0


def obctl(socket_path: str, *args: str) -> int:
    env = dict(os.environ, OBSERVER_SOCKET=socket_path)
    print(f"$ obctl {' '.join(args)}", flush=True)
    return subprocess.run([sys.executable, "-m", "obclient.obctl", *args], env=env).returncode


def main() -> int:
    with Obsim(SIM_ARGS) as sim:
        print(f"obsim: serving {', '.join(sim.info['exchanges'])} (pid {sim.info['pid']})",
              flush=True)
        obs = ObserverProcess(None, name=unique_name("demo"))
        try:
            config_path = os.path.join(obs.workdir, "observer.toml")
            write_config(config_path, sim.info, FEEDS, name=obs.name, depth=50)
            obs.args += ["--config", config_path]
            obs.start()
            print(f"observer: started (pid {obs.proc.pid}), waiting for live books", flush=True)
            obs.wait_ready(READY_TIMEOUT_S).close()
            shown = obctl(obs.socket_path, "list")
            shown |= obctl(obs.socket_path, "snapshot", "BTCUSD", "--depth", str(DEPTH))
            code = obs.stop()
            removed = not os.path.exists(obs.socket_path)
            print(f"observer: stopped (exit {code}, socket removed: {removed})", flush=True)
            if shown or code or not removed:
                print(obs.log_text(), file=sys.stderr)
                return 1
        finally:
            obs.close()                # kills it if still running; removes config, log, socket dir
    print("obsim: stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
