"""A blackholed upstream (connections neither accepted nor refused: packets dropped) costs
one connect timeout, not one per request: after it, pulls of what is cached go on with no
connection attempt while regcache remembers the registry is down, as with an upstream
that refuses. Over real sockets: the blackhole is a loopback listener whose accept queue
is full, so the kernel drops further SYNs."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from appliance.oci.mediatypes import OCI_MANIFEST
from appliance.proxy.site import Site
from appliance.upstream.client import UpstreamClient
from tests.upstream.loopback import LAB, loopback, serving
from tests.upstream.proxied import PlainHttp, proxied

MANIFEST = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}'
M_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
BLOB = bytes(range(256)) * 64
B_DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
CONNECT_TIMEOUT_S = 0.3

_connects: dict[int, int] = {}
"""Port → connection attempts (`socket.connect` audit events) to it, for ports watched."""


def _count_connects(event: str, args: tuple[object, ...]) -> None:
    if event == "socket.connect":
        address = args[1]
        if isinstance(address, tuple) and address[1] in _connects:
            _connects[address[1]] += 1


sys.addaudithook(_count_connects)


@contextlib.contextmanager
def blackhole() -> Iterator[int]:
    """A loopback port that never answers a connection attempt (a full accept queue)."""
    with contextlib.ExitStack() as stack:
        listener = stack.enter_context(socket.socket())
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = int(listener.getsockname()[1])
        for _ in range(4):  # fill the queue (backlog 0 takes one; the rest wait in SYN)
            filler = stack.enter_context(socket.socket())
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
        _connects[port] = 0
        try:
            yield port
        finally:
            del _connects[port]


async def registry(request: web.Request) -> web.StreamResponse:
    path = request.path
    if path.endswith("/manifests/3") or path.endswith(f"/manifests/{M_DIGEST}"):
        headers = {"Docker-Content-Digest": M_DIGEST, "Content-Type": OCI_MANIFEST}
        return web.Response(body=MANIFEST, headers=headers)
    if path.endswith(f"/blobs/{B_DIGEST}"):
        return web.Response(body=BLOB, headers={"Docker-Content-Digest": B_DIGEST})
    return web.Response(status=401, headers={"WWW-Authenticate": 'Bearer realm="x"'})


@dataclass
class Lab:
    client: TestClient[web.Request, web.Application]
    upstream: PlainHttp
    dark: int
    """The blackhole's port: `connects()` counts attempts to it."""

    def connects(self) -> int:
        return _connects[self.dark]

    async def ask(self, path: str, **headers: str) -> tuple[int, bytes]:
        headers = {"Host": "reg.test", "Accept": OCI_MANIFEST, **headers}
        async with asyncio.timeout(30):  # a safety net: each answer takes a timeout at most
            async with self.client.get(path, headers=headers) as response:
                return response.status, await response.read()

    async def pull(self) -> list[int]:
        """A cached image pulled as a client would: ping, tag, blob; the statuses."""
        answers = [
            await self.ask("/v2/"),
            await self.ask("/v2/lib/app/manifests/3", Authorization="Bearer one"),
            await self.ask(f"/v2/lib/app/blobs/{B_DIGEST}", Authorization="Bearer one"),
        ]
        assert answers[1][1] == MANIFEST and answers[2][1] == BLOB
        return [status for status, _ in answers]


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    """The image pulled while upstream was up; then upstream goes dark."""
    client = UpstreamClient(loopback, None, CONNECT_TIMEOUT_S, 5, targets=LAB)
    site = Site(tag_ttl_s=0, max_stale_s=3600, api=True, label="reg.test")  # always revalidate
    with blackhole() as dark:
        async with serving(registry) as server:
            assert server.port is not None
            upstream = PlainHttp(client, server.port)
            async with proxied(tmp_path, upstream, site) as proxy:
                lab = Lab(proxy, upstream, dark)
                assert [s for s, _ in [await lab.ask("/v2/lib/app/manifests/3",
                        Authorization="Bearer one")]] == [200]  # fmt: skip
                await lab.ask(f"/v2/lib/app/blobs/{B_DIGEST}", Authorization="Bearer one")
                upstream.port = dark
                yield lab


async def test_after_one_connect_timeout_cached_pulls_attempt_no_connection(lab: Lab) -> None:
    assert await lab.pull() == [200, 200, 200]  # ping answered for upstream, tag stale
    assert lab.connects() == 1  # the ping met the blackhole; the tag did not try again
    for _ in range(3):
        assert await lab.pull() == [200, 200, 200]
    assert lab.connects() == 1  # while regcache remembers: not one more attempt


async def test_once_the_memory_lapses_one_request_tries_and_the_others_do_not_wait(
    lab: Lab,
) -> None:
    lab.upstream.client = UpstreamClient(
        loopback, None, CONNECT_TIMEOUT_S, 5, targets=LAB, outage_retry_s=0.2
    )
    try:
        assert (await lab.ask("/v2/"))[0] == 200
        assert lab.connects() == 1
        await asyncio.sleep(0.3)  # the memory lapses: upstream may be back
        pings = await asyncio.gather(*(lab.ask("/v2/") for _ in range(5)))
        assert [status for status, _ in pings] == [200] * 5
        assert lab.connects() == 2  # one tries again; the other four do not wait for it
    finally:
        await lab.upstream.client.close()
