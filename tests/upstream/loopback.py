"""Loopback test servers standing in for many hosts: every name resolves to 127.0.0.1 and
the server tells hosts apart by the Host header."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from aiohttp.test_utils import TestServer

from appliance.config.hostnames import HostSet
from appliance.upstream.targets import TargetPolicy

LOOPBACK = (ipaddress.ip_address("127.0.0.1"),)
TEST_HOSTS = ("reg.test", "cdn.test", "pkg.test", "basic.test", "token.test", "static.test",
              "pushy.test")  # fmt: skip
LAB = TargetPolicy(HostSet.of(TEST_HOSTS))
"""These test registries are on loopback and speak plain HTTP: allowed like a registry
with `allow_unsafe_targets`."""


async def loopback(_host: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]:
    return LOOPBACK


@contextlib.asynccontextmanager
async def serving(
    handle: Callable[[web.Request], Awaitable[web.StreamResponse]],
) -> AsyncIterator[TestServer]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()
