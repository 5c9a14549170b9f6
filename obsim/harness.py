"""Run obsim from a test or a benchmark: start it, read its line, drive it, always stop it.

    with Obsim(["--exchanges", "kraken", "--rate", "50"]) as sim:
        url = sim.ws_url("kraken")                 # wss://127.0.0.1:PORT/v2
        ctx = sim.ssl_context()                    # trusts obsim's CA file only
        sim.pause("kraken"); book = sim.book("kraken", "BTC/USD", depth=10)

obsim runs as a subprocess (`python -m obsim.cli`), so a test exercises the real
process, ports and TLS. The control calls use only the standard library (`http.client` over
`ssl` with the printed CA file), so the harness works wherever obsim does. Leaving the `with`
block always ends the process (SIGTERM, then SIGKILL after a deadline), removes the directory
obsim was told to keep its files in (`--tmp-dir`, made here, so even a kill during start-up
leaves nothing), and deletes the captured stderr file.
"""

from __future__ import annotations

import http.client
import json
import os
import select
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlencode, urlsplit

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
CONTROL_TIMEOUT_S = 30.0


class ObsimError(RuntimeError):
    """obsim failed to start, or a control call was refused (the message says why)."""


class Obsim:
    def __init__(self, args: list[str] | None = None, start_timeout_s: float = START_TIMEOUT_S,
                 process_group: int | None = None) -> None:
        self.args = list(args or [])
        self.start_timeout_s = start_timeout_s
        self.process_group = process_group      # 0: its own group (no terminal Ctrl-C reaches it)
        self.proc: subprocess.Popen | None = None
        self.info: dict = {}
        self._stderr = None
        self._tmp_dir: str | None = None
        self._ssl: ssl.SSLContext | None = None
        self.last_headers: dict[str, str] = {}

    # -- lifetime -------------------------------------------------------------------------

    def __enter__(self) -> Obsim:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self._stderr = tempfile.TemporaryFile(prefix="obsim-stderr-")
        # obsim's files go in a directory this side owns and always removes, even if obsim is
        # killed before it prints where they are.
        self._tmp_dir = tempfile.mkdtemp(prefix=f"obsim-harness-{os.getpid()}-")
        # stdin is a pipe only this process holds: if it dies without stopping obsim, the pipe
        # closes and obsim exits on its own (--exit-on-stdin-eof), so nothing outlives a test.
        self.proc = subprocess.Popen([sys.executable, "-m", "obsim.cli", "--exit-on-stdin-eof",
                                      "--tmp-dir", self._tmp_dir, *self.args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                     process_group=self.process_group)
        try:
            line = self._read_line(self.start_timeout_s)
            self.info = json.loads(line)
        except BaseException:
            self.stop()
            raise
        self._ssl = ssl.create_default_context(cafile=self.info["ca_file"])

    def _read_line(self, timeout_s: float) -> bytes:
        deadline_s = time.monotonic() + timeout_s
        buf = b""
        fd = self.proc.stdout.fileno()
        while b"\n" not in buf:
            remaining_s = deadline_s - time.monotonic()
            if remaining_s <= 0:
                raise ObsimError(f"obsim printed no start-up line within {timeout_s} s: {self.stderr_text()}")
            ready, _, _ = select.select([fd], [], [], remaining_s)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise ObsimError(f"obsim exited before its start-up line: {self.stderr_text()}")
                buf += chunk
        return buf.partition(b"\n")[0]

    def stderr_text(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-4000:]

    def stop(self) -> int | None:
        """End obsim; return its exit code (None if it had to be killed)."""
        code = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc.stdout.close()
            self.proc.stdin.close()
            self.proc = None
        if self._tmp_dir is not None:
            shutil.rmtree(self._tmp_dir, ignore_errors=True)
            self._tmp_dir = None
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        return code

    # -- addresses ----------------------------------------------------------------------

    def ws_url(self, exchange: str) -> str:
        return self.info["exchanges"][exchange]["ws_url"]

    def rest_url(self, exchange: str) -> str:
        return self.info["exchanges"][exchange]["rest_url"]

    @property
    def ca_file(self) -> str:
        return self.info["ca_file"]

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_file)

    # -- control --------------------------------------------------------------------------

    def call(self, method: str, path: str, **params) -> dict:
        status, body = self.request(self.info["control_url"], method, path, params)
        reply = json.loads(body)
        if status != 200:
            raise ObsimError(f"{method} {path}: {status} {reply.get('error', reply)}")
        return reply

    def request(self, base_url: str, method: str, path: str, params: dict | None = None,
                headers: dict | None = None) -> tuple[int, bytes]:
        """One HTTPS request to obsim (control or REST); returns (status, body)."""
        split = urlsplit(base_url)
        query = urlencode({k: v for k, v in (params or {}).items() if v is not None})
        conn = http.client.HTTPSConnection(split.hostname, split.port, context=self._ssl,
                                           timeout=CONTROL_TIMEOUT_S)
        try:
            conn.request(method, f"{path}?{query}" if query else path, headers=headers or {})
            response = conn.getresponse()
            self.last_headers = {k.lower(): v for k, v in response.getheaders()}
            return response.status, response.read()
        finally:
            conn.close()

    def book(self, exchange: str, symbol: str, depth: int = 50) -> dict:
        return self.call("GET", "/book", exchange=exchange, symbol=symbol, depth=depth)

    def counters(self, exchange: str | None = None) -> dict:
        reply = self.call("GET", "/counters", exchange=exchange)
        return reply[exchange] if exchange else reply

    def pause(self, exchange: str | None = None) -> dict:
        return self.call("POST", "/pause", exchange=exchange)

    def resume(self, exchange: str | None = None) -> dict:
        return self.call("POST", "/resume", exchange=exchange)

    def step(self, exchange: str, count: int = 1, symbol: str | None = None) -> dict:
        return self.call("POST", "/step", exchange=exchange, count=count, symbol=symbol)

    def fault(self, exchange: str, kind: str, symbol: str | None = None, **params) -> dict:
        return self.call("POST", "/fault", exchange=exchange, kind=kind, symbol=symbol, **params)
