"""Who may connect to the HTTPS port, and how many connections each client may hold.

Checked at accept, before a byte is read: a client outside `tls.allow_clients`, or one
already holding `tls.max_connections_per_client` connections, is closed at once, so one
host cannot take every handshake slot (or file descriptor) from the others. A slot is
held from accept until the connection ends: through the ClientHello wait and the TLS
handshake on the front door, then while the HTTP protocol serves it on a serving loop
(`counted` gives it back from there). Clients are counted per address: IPv6 hosts of
one LAN share their /64, so a prefix would make the whole build network one client.
"""

from __future__ import annotations

import asyncio
import ipaddress
import threading
from collections.abc import Callable

from appliance.config.values import IPNetwork

EVERYONE: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("0.0.0.0/0"),
    ipaddress.ip_network("::/0"),
)


class Admission:
    """The allow-list and the per-client connection count; safe from any thread (slots
    are taken on the front door's loop and given back on the serving loops)."""

    def __init__(
        self, allow_clients: tuple[IPNetwork, ...] = EVERYONE, max_per_client: int = 256
    ) -> None:
        self._allow = allow_clients
        self._everyone = set(EVERYONE) <= set(allow_clients)  # the default: no lookups
        self.max_per_client = max_per_client
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def allowed(self, client: str) -> bool:
        """Whether `client` (an address as the socket reports it) is in the allow-list."""
        if self._everyone:
            return True
        ip = ipaddress.ip_address(client.split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self._allow)

    def take(self, client: str) -> Slot | None:
        """A slot for one more connection of `client`, or None if it holds them all."""
        with self._lock:
            held = self._held.get(client, 0)
            if held >= self.max_per_client:
                return None
            self._held[client] = held + 1
        return Slot(self, client)

    def held(self, client: str) -> int:
        with self._lock:
            return self._held.get(client, 0)

    def _give(self, client: str) -> None:
        with self._lock:
            held = self._held.pop(client, 0) - 1
            if held > 0:
                self._held[client] = held


class Slot:
    """One connection's place in its client's count; `release` is idempotent, as a
    connection may end on the front door and on its serving loop at once."""

    __slots__ = ("_admission", "_client", "_lock")

    def __init__(self, admission: Admission, client: str) -> None:
        self._admission: Admission | None = admission
        self._client = client
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            admission, self._admission = self._admission, None
        if admission is not None:
            admission._give(self._client)


def counted(
    factory: Callable[[], asyncio.BaseProtocol], slot: Slot
) -> Callable[[], asyncio.Protocol]:
    """`factory`'s protocol, giving `slot` back when its connection is lost."""

    def make() -> asyncio.Protocol:
        inner = factory()
        if not isinstance(inner, asyncio.Protocol):  # aiohttp's server protocol is one
            raise TypeError(f"{type(inner).__name__} is not an asyncio.Protocol")
        return _Counted(inner, slot)

    return make


class _Counted(asyncio.Protocol):
    """Passes every event to the HTTP protocol; aiohttp's uses `__slots__`, so its
    `connection_lost` cannot be wrapped in place."""

    __slots__ = ("_inner", "_slot")

    def __init__(self, inner: asyncio.Protocol, slot: Slot) -> None:
        self._inner = inner
        self._slot = slot

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self._inner.connection_lost(exc)
        finally:
            self._slot.release()
