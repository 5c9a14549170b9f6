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

Ctrl-C at any instant is a clean stop (observer/process/stopsignals.py). Every child runs in a process
group of its own, so the terminal's SIGINT reaches this driver only (never a child still
importing, which would print a traceback), and the driver stops them in order: the step it was
waiting on is abandoned, the observer gets SIGTERM and is waited for, obsim is stopped, the
temp directories go. Starting a child is one step that is never cut in half (`deferred`), so
no child exists that the clean-up does not know about. Exit status: 0 when every step worked,
1 when one failed (said on stderr), 128 + the signal's number when interrupted (130 for Ctrl-C).
"""

from __future__ import annotations

import os
import subprocess
import sys

from obsim.harness import Obsim
from obsim.simconfig import write_config
from observer.process.stopsignals import Interrupted, StopSignals
from obsim.observerproc import ObserverProcess, unique_name

FEEDS = (("binance", ["BTCUSDT", "ETHUSDT"]), ("kraken", ["BTC/USD", "ETH/USD"]),
         ("okx", ["SOL-USDT"]), ("bybit", ["XRPUSDT"]))
SIM_ARGS = ["--exchanges", ",".join(e for e, _ in FEEDS), "--rate", "20", "--depth", "200",
            "--seed", "7", *[a for e, s in FEEDS for a in ("--symbol", f"{e}={','.join(s)}")]]
DEPTH = 10
READY_TIMEOUT_S = 90.0
EXIT_FAILED = 1


class Demo:
    """The children of one `make run` and the steps between them; `close` undoes them all."""

    def __init__(self) -> None:
        self.sim = Obsim(SIM_ARGS, process_group=0)
        self.obs: ObserverProcess | None = None

    def run(self, stop: StopSignals) -> int:
        with stop.deferred():
            self.sim.start()
        print(f"obsim: serving {', '.join(self.sim.info['exchanges'])} "
              f"(pid {self.sim.info['pid']})", flush=True)
        with stop.deferred():
            self.obs = ObserverProcess(None, name=unique_name("demo"))   # makes its workdir
        config_path = os.path.join(self.obs.workdir, "observer.toml")
        write_config(config_path, self.sim.info, FEEDS, name=self.obs.name, depth=50)
        self.obs.args += ["--config", config_path]
        with stop.deferred():
            self.obs.start(process_group=0)
        print(f"observer: started (pid {self.obs.proc.pid}), waiting for live books", flush=True)
        self.obs.wait_ready(READY_TIMEOUT_S).close()
        shown = obctl(stop, self.obs.socket_path, "list")
        shown |= obctl(stop, self.obs.socket_path, "snapshot", "BTCUSD", "--depth", str(DEPTH))
        stop.hold()                     # what is left is the orderly stop itself
        code = self.obs.stop()
        removed = not os.path.exists(self.obs.socket_path)
        print(f"observer: stopped (exit {code}, socket removed: {removed})", flush=True)
        if shown or code or not removed:
            print(self.obs.log_text(), file=sys.stderr)
            return EXIT_FAILED
        return 0

    def close(self) -> None:
        """Stop whatever still runs, observer first (it reads from obsim), and remove every file."""
        if self.obs is not None:
            if self.obs.proc is not None and self.obs.proc.poll() is None:
                try:
                    print(f"observer: stopped (exit {self.obs.stop()})", flush=True)
                except subprocess.TimeoutExpired:
                    pass                # close() below kills it
            self.obs.close()            # kills it if still running; removes config, log, socket dir
        was_running = self.sim.proc is not None
        self.sim.stop()                 # also removes the temp dir of a start cut short
        if was_running:
            print("obsim: stopped", flush=True)


def obctl(stop: StopSignals, socket_path: str, *args: str) -> int:
    env = dict(os.environ, OBSERVER_SOCKET=socket_path)
    print(f"$ obctl {' '.join(args)}", flush=True)
    with stop.deferred():
        proc = subprocess.Popen([sys.executable, "-m", "obclient.obctl", *args], env=env,
                                process_group=0)
    try:
        return proc.wait()
    finally:
        if proc.poll() is None:         # interrupted while it ran
            proc.kill()
            proc.wait()


def main() -> int:
    stop = StopSignals()
    demo = Demo()
    try:
        try:
            stop.install()
            code = demo.run(stop)
        finally:
            stop.hold()                 # a signal from here on is recorded: clean-up runs whole
    except Interrupted:
        print("make run: interrupted; stopping everything it started", file=sys.stderr, flush=True)
    except Exception as exc:            # a step failed (obsim or the observer did not start)
        print(f"make run: {exc}", file=sys.stderr, flush=True)
        code = EXIT_FAILED
    demo.close()
    stop.close()
    return code if stop.signum is None else 128 + stop.signum


if __name__ == "__main__":
    raise SystemExit(main())
