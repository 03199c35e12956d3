"""Who may connect to the HTTPS port, and how many connections each client may hold.

Checked at accept, before a byte is read: a client outside `tls.allow_clients`, or one
already holding `tls.max_connections_per_client` connections, is closed at once, so one
host cannot take every file descriptor from the others. A slot is held from accept until
the connection ends: through the ClientHello wait and the TLS handshake on the front
door, then while the HTTP protocol serves it on a serving loop (`counted` gives it back
from there). Clients are counted per address: IPv6 hosts of one LAN share their /64, so
a prefix would make the whole build network one client.

Connections whose TLS handshake is not done yet (the ClientHello wait, the choice of
leaf, the handshake) are capped again, much lower: `tls.max_pending_per_client` per
address (128), and for IPv6 also `max_pending_per_prefix` per /64 (512). The listener
sheds every new connection while 1,024 handshakes are pending in all; these caps are
what keep a few addresses that stall their hellos from filling that: it takes 8 IPv4
addresses, or 2 IPv6 /64s (a build host starting many pulls at once opens ~100 new
connections in a burst: 32 cut its pulls short). The /64 cap is a compromise: one host
may use any number of addresses in its /64, so per address alone a single IPv6 host
could fill the 1,024; per /64 alone the hosts of an IPv6 build LAN would share 128. A
hostile host can still keep the other IPv6 hosts of its own /64 from handshaking (while
it holds 512 pending); IPv4 clients and other /64s are unaffected.
"""

from __future__ import annotations

import asyncio
import ipaddress
import threading
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, IPv6Network

from appliance.config.model import TlsConfig
from appliance.config.values import IPNetwork

EVERYONE: tuple[IPNetwork, ...] = (
    ipaddress.ip_network("0.0.0.0/0"),
    ipaddress.ip_network("::/0"),
)


def _address(client: str) -> tuple[IPv4Address | IPv6Address, str]:
    """`client` as the socket reports it: the address (IPv4-mapped as IPv4) and zone."""
    text, _, zone = client.partition("%")
    ip = ipaddress.ip_address(text)
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped, ""
    return ip, zone


def prefix_of(client: str) -> str | None:
    """The /64 an IPv6 client is in (with its zone: each link has its own fe80::/64);
    None for IPv4, also when spelled IPv4-mapped."""
    ip, zone = _address(client)
    if isinstance(ip, IPv4Address):
        return None
    prefix = str(IPv6Network((int(ip) >> 64 << 64, 64)))
    return f"{prefix}%{zone}" if zone else prefix


@dataclass(frozen=True, slots=True)
class Refused:
    """Why `take` refused a connection: the log's `reason`, the limit reached, and what
    was counted against it (the address, or its /64)."""

    reason: str
    limit: int
    counted: str


class Admission:
    """The allow-list and the per-client counts; safe from any thread (slots are taken
    on the front door's loop and given back on the serving loops)."""

    def __init__(
        self,
        allow_clients: tuple[IPNetwork, ...] = EVERYONE,
        max_per_client: int = 256,
        max_pending_per_client: int = 128,
        max_pending_per_prefix: int = 512,
    ) -> None:
        self._allow = allow_clients
        self._everyone = set(EVERYONE) <= set(allow_clients)  # the default: no lookups
        self._max_held = max_per_client
        self._max_pending = max_pending_per_client
        self._max_prefix = max_pending_per_prefix
        self._held: dict[str, int] = {}
        self._pending: dict[str, int] = {}
        self._prefixes: dict[str, int] = {}
        self._lock = threading.Lock()

    @classmethod
    def configured(cls, tls: TlsConfig) -> Admission:
        """As the `tls` config keys say (the /64 cap is not a key: see the docstring)."""
        return cls(tls.allow_clients, tls.max_connections_per_client, tls.max_pending_per_client)

    def allowed(self, client: str) -> bool:
        """Whether `client` (an address as the socket reports it) is in the allow-list."""
        if self._everyone:
            return True
        ip, _zone = _address(client)
        return any(ip in net for net in self._allow)

    def take(self, client: str) -> Slot | Refused:
        """A slot for one more connection of `client`, pending until its handshake is
        done (`Slot.handshake_done`); or why not."""
        prefix = prefix_of(client)
        with self._lock:
            refused = self._refusal(client, prefix)
            if refused is not None:
                return refused
            _up(self._held, client)
            _up(self._pending, client)
            if prefix is not None:
                _up(self._prefixes, prefix)
        return Slot(self, client, prefix)

    def held(self, client: str) -> int:
        """Connections `client` holds. regcache never asks; tests do, to know that the
        listener (on a thread of its own) has admitted the connections they opened."""
        with self._lock:
            return self._held.get(client, 0)

    def _refusal(self, client: str, prefix: str | None) -> Refused | None:
        if self._held.get(client, 0) >= self._max_held:
            return Refused("too-many-connections", self._max_held, client)
        if self._pending.get(client, 0) >= self._max_pending:
            return Refused("too-many-pending", self._max_pending, client)
        if prefix is not None and self._prefixes.get(prefix, 0) >= self._max_prefix:
            return Refused("too-many-pending-in-prefix", self._max_prefix, prefix)
        return None

    def _give(self, client: str, prefix: str | None, *, held: bool, pending: bool) -> None:
        with self._lock:
            if held:
                _down(self._held, client)
            if pending:
                _down(self._pending, client)
                if prefix is not None:
                    _down(self._prefixes, prefix)


def _up(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1


def _down(counts: dict[str, int], key: str) -> None:
    left = counts.pop(key, 0) - 1
    if left > 0:
        counts[key] = left


class Slot:
    """One connection's place in its client's counts. Both ends are idempotent, as a
    connection may end on the front door and on its serving loop at once."""

    __slots__ = ("_admission", "_client", "_lock", "_pending", "_prefix")

    def __init__(self, admission: Admission, client: str, prefix: str | None) -> None:
        self._admission: Admission | None = admission
        self._client = client
        self._prefix = prefix
        self._pending = True
        self._lock = threading.Lock()

    def handshake_done(self) -> None:
        """The handshake is over (done, failed or given up): no longer pending."""
        with self._lock:
            admission = self._admission if self._pending else None
            self._pending = False
        if admission is not None:
            admission._give(self._client, self._prefix, held=False, pending=True)

    def release(self) -> None:
        """The connection ended: its place, and its pending one if still held."""
        with self._lock:
            admission, self._admission = self._admission, None
            pending, self._pending = self._pending, False
        if admission is not None:
            admission._give(self._client, self._prefix, held=True, pending=pending)


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
