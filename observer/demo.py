"""`make run`: start an observer on the synthetic feed, show a live book, stop cleanly.

What it does, in order: starts `observer --feed synthetic:BTCUSD,ETHUSD` as its own process on
a socket in a private temp directory (so it never collides with an observer already running),
waits until both books are published live, runs `obctl snapshot BTCUSD` against it exactly as a
user would, then stops the observer with SIGTERM and checks that it removed its socket.

Later issues switch the feed to the bundled exchange simulator (obsim).
"""

from __future__ import annotations

import os
import subprocess
import sys

from observer.testing import ObserverProcess

FEED = "synthetic:BTCUSD,ETHUSD"
RATE_HZ = 50
DEPTH = 10


def main() -> int:
    with ObserverProcess(FEED, rate=RATE_HZ, seed=7) as obs:
        print(f"observer: starting {FEED} (pid {obs.proc.pid}, socket {obs.socket_path})",
              flush=True)
        obs.wait_ready().close()
        env = dict(os.environ, OBSERVER_SOCKET=obs.socket_path)
        cmd = [sys.executable, "-m", "obclient.obctl", "snapshot", "BTCUSD", "--depth",
               str(DEPTH)]
        print(f"$ obctl snapshot BTCUSD --depth {DEPTH}", flush=True)
        shown = subprocess.run(cmd, env=env)
        code = obs.stop()
        removed = not os.path.exists(obs.socket_path)
        print(f"observer: stopped (exit {code}, socket removed: {removed})")
        if shown.returncode or code or not removed:
            print(obs.log_text(), file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
