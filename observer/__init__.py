"""observer: a shared-memory L2 order book server for trading systems.

Packages, lowest layer first (each imports only from those before it, tests/test_imports.py):
`loom` (the fiber event loop), `telemetry` (structured logs, memory traces), `book` (the exact
L2 book), `net` (TCP, TLS, HTTP, WebSocket on loom), `config` (the settings, the command line,
the shard partition), `feeds` (sans-IO exchange adapters and the session driver), `shm` (the
segment writer), `server` (the unix-socket control server), `shard` (what runs in one shard),
`process` (the process tree), and `cli` (the `observer` command). The layout and wire messages
are the `obproto` package, shared with the client library (the `obclient` distribution).
"""

__version__ = "0.1.0"
