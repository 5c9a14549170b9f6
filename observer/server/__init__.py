"""observer.server: the unix-socket control server (C7).

`protocol.ServerConnection` is the sans-IO machine for one client (bytes in, replies out);
`control.ControlServer` serves it on loom with fd passing; `admission` decides who may hold a
connection (allow-list, per-uid and per-pid limits) and `transport.ClientTransport` moves one
client's bytes (back pressure, idle deadline).
"""

from observer.server.control import ControlServer, SocketInUse, bind_socket, peer_credentials
from observer.server.protocol import ServerConnection

__all__ = ["ControlServer", "ServerConnection", "SocketInUse", "bind_socket", "peer_credentials"]
