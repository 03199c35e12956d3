"""Every upstream name resolves to 127.0.0.1: test servers tell hosts apart by Host."""

from __future__ import annotations

import ipaddress

LOOPBACK = (ipaddress.ip_address("127.0.0.1"),)


async def loopback(_host: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
    return LOOPBACK
