"""obsim: the loopback exchange simulator that observer's feeds are tested against.

Why it exists: the observer's exchange adapters must be right on six protocols, each with its
own sync rules, keepalives, limits and ways to fail, and the real exchanges cannot be asked to
fail on demand. obsim serves all six on 127.0.0.1 over wss:// and https:// (a certificate it
makes at start), with the real URL paths, subscribe/ack messages and message shapes, keeps each
exchange's true book exactly (scaled integers), and injects faults when told to. A test then
compares what the observer published with `GET /book` on the control port.

Why it is separate: it is written from the protocol notes alone, on asyncio and the
`websockets` library, and never imports observer.feeds or observer.book. Two independent
readings of each protocol that agree are the evidence; a shared helper would hide a shared bug.

Layout: `book` (exact books, text, checksums), `source` (seeded random walk, precomputed
cycle, recorded replay), `replay` (recordings -> change lists), `wire` (pre-encoded frames and
the per-connection queue), `venue` (what every exchange shares: markets, tick, faults,
counters), one module per exchange (`binance`, `coinbase`, `kraken`, `okx`, `bybit`),
`server` (ports, ticker, housekeeping), `control` (HTTPS JSON API), `tls`, `cli` (`obsim`),
and `harness` (start obsim from a test, drive it, always clean up).

On top of the simulator, and the only modules here that import observer or obclient
(tests/test_imports.py holds both rules): `observerproc` (start an observer process, wait
until it serves, stop it, leave nothing: for `make run`, the tests and bench/), `simconfig` (an
observer config file pointing feeds at a running obsim) and `demo` (`make run`).
"""
