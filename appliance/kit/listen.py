"""Non-blocking sockets bound to configured endpoints, for every listener alike."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

from appliance.config.values import Endpoint

BACKLOG = 1024


ServingLoop = tuple[asyncio.AbstractEventLoop, Callable[[], asyncio.BaseProtocol]]
"""An event loop (in its own thread) and the protocol factory connections get there."""


def bind(endpoint: Endpoint, kind: socket.SocketKind) -> socket.socket:
    """A socket bound to `endpoint` (listening, for TCP); IPv6 sockets are IPv6-only so
    that `0.0.0.0:53` and `[::]:53` can be listed side by side."""
    family = socket.AF_INET6 if endpoint.address.version == 6 else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((str(endpoint.address), endpoint.port))
        if kind == socket.SOCK_STREAM:
            sock.listen(BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
