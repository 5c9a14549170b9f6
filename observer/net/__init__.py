"""observer/net: TCP, TLS, HTTP/1.1 and a WebSocket client on loom.

The protocol logic lives in sans-IO modules (`wsframe`, `wshandshake`, `httpparse`: bytes in,
events out, no sockets) so that it is tested byte by byte without a network; `tcp`, `tls`,
`http` and `websocket` run it over loom fibers. Every failure is a `NetError` subclass.
"""

# The package's public names are its errors, listed once in errors.py.
from observer.net.errors import *  # noqa: F403
from observer.net.errors import __all__  # noqa: F401
