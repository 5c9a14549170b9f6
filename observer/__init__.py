"""observer: a shared-memory L2 order book server for trading systems.

Packages: `loom` (the fiber event loop), `net` (TCP, TLS, HTTP, WebSocket on loom), `feeds`
(sans-IO exchange adapters and the session driver), `book` (the exact L2 book), `shm` (the
segment writer), `server` (the unix-socket control server), `sim` (obsim, the exchange simulator).
"""

__version__ = "0.1.0"
