"""The whole pull path in process — proxy, `RegistryCache`, `AccessGate`, a real store
and index — over the real `UpstreamClient`, for tests of what the client does end to end.

The cache asks `https://reg.test/…`; a loopback registry speaks plain HTTP on its own
port, so `PlainHttp` rewrites that one origin (and nothing a redirect leads to)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from appliance.cache.access import AccessGate
from appliance.cache.ports import UpstreamReply
from appliance.cache.service import RegistryCache
from appliance.proxy.app import create_app
from appliance.proxy.site import Site
from appliance.store.files import FileBlobStore
from appliance.store.index import SqliteIndex
from appliance.upstream.client import UpstreamClient


class PlainHttp:
    """The upstream port over `client`, with `https://reg.test/` at `http://reg.test:port/`
    (`port` may be changed: the registry moved, or went dark)."""

    def __init__(self, client: UpstreamClient, port: int) -> None:
        self.client, self.port = client, port

    def _plain(self, url: str) -> str:
        return url.replace("https://reg.test/", f"http://reg.test:{self.port}/", 1)

    async def fetch(self, method: str, url: str, headers: Mapping[str, str]) -> UpstreamReply:
        return await self.client.fetch(method, self._plain(url), headers)

    async def fetch_anonymous(
        self, method: str, url: str, accept: str | None = None
    ) -> UpstreamReply:
        return await self.client.fetch_anonymous(method, self._plain(url), accept)

    async def send(
        self, method: str, url: str, headers: Mapping[str, str], body: Any = None
    ) -> UpstreamReply:
        return await self.client.send(method, self._plain(url), headers, body)


@contextlib.asynccontextmanager
async def proxied(
    tmp_path: Path,
    upstream: PlainHttp,
    site: Site,
    audit: Callable[[dict[str, object]], None] | None = None,
) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    """A client of the proxy for Host `reg.test`, over `upstream` (closed on exit)."""
    files = FileBlobStore(tmp_path / "store")
    files.prepare()
    index = await SqliteIndex.open(tmp_path / "index.sqlite")
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(index.close)
        stack.push_async_callback(upstream.client.close)
        cache = RegistryCache(files, index, upstream, AccessGate(upstream, index, files))
        app = create_app(cache, upstream, lambda h: site if h == "reg.test" else None,
                         audit=audit)  # fmt: skip
        client = TestClient(TestServer(app))
        await client.start_server()
        stack.push_async_callback(client.close)
        yield client
