"""The whole request path in process, over real parts: the proxy application (aiohttp's
test client), the real cache over a real store and index, the real upstream client, and a
small registry on loopback standing in for upstream (every upstream name is rewritten to
it: `https://<host>/…` becomes `http://<host>:<its port>/…`, resolved to 127.0.0.1)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer

from appliance.admin.metrics import Metrics
from appliance.cache.access import AccessGate
from appliance.cache.negative import NegativeCache
from appliance.cache.ports import Unbounded
from appliance.cache.service import RegistryCache
from appliance.config.hostnames import Hostname, HostPattern, HostSet
from appliance.config.local import LocalConfig
from appliance.config.model import RegistryConfig
from appliance.config.push import DENY, PushRule
from appliance.config.registries import Registries
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import DOCKER_MANIFEST
from appliance.proxy.app import create_app
from appliance.proxy.loops import Bridge
from appliance.runtime.local import build_local
from appliance.runtime.sites import site_resolver
from appliance.store.files import FileBlobStore
from appliance.store.index import SqliteIndex
from appliance.upstream.client import Reply, UpstreamClient
from appliance.upstream.targets import TargetPolicy
from tests.upstream.loopback import loopback

HOST = "reg.test"
HUB = "registry-1.docker.io"
HUB_ALIAS = "index.docker.io"
TTL_HOST = "ttl.test"
LOCAL = "registry.build.internal"
"""Its tags are answered from the store for 5 minutes between checks."""
_ROUTE = re.compile(r"/v2/(?P<name>.+)/manifests/(?P<ref>[^/]+)")


@dataclass
class Manifest:
    body: bytes
    media_type: str
    digest: Digest
    """Docker-Content-Digest: the body's, except for a signed schema 1 manifest."""


def manifest(config: str = "config", media_type: str = DOCKER_MANIFEST) -> Manifest:
    """A small image manifest, distinct per `config` (its digests need not be stored)."""
    body = json.dumps({
        "schemaVersion": 2, "mediaType": media_type,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                   "digest": str(Digest.of(config.encode())), "size": len(config)},
        "layers": [],
    }, indent=3).encode()  # fmt: skip
    return Manifest(body, media_type, Digest.of(body))


@dataclass
class FakeRegistry:
    """Manifests by repository and reference (tag or digest), public, pushable with PUT.
    Like Docker Hub, `alpine` and `library/alpine` name one repository on every host."""

    manifests: dict[tuple[str, str], Manifest] = field(default_factory=dict)
    head_length: bool = True
    """False: a manifest HEAD says no Content-Length (some registries, some proxies)."""
    head_digest: bool = True
    """False: a manifest HEAD says no Docker-Content-Digest."""
    seen: list[tuple[str, str, str]] = field(default_factory=list)
    """(method, host, path) of every request."""

    def put(self, repository: str, reference: str, m: Manifest) -> None:
        self.manifests[(_official(repository), reference)] = m
        self.manifests[(_official(repository), str(m.digest))] = m

    def asked(self, method: str, path: str) -> int:
        return sum(1 for m, _, p in self.seen if (m, p) == (method, path))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.host.split(":")[0], request.path))
        if request.path == "/v2/":
            return web.json_response({})
        if request.method == "PATCH" and "/blobs/uploads/" in request.path:
            await request.read()  # a chunk of an upload: taken, nothing pullable yet
            return web.Response(status=202, headers={"Range": "0-0"})
        route = _ROUTE.fullmatch(request.path)
        if route is None:
            return web.json_response({"errors": [{"code": "UNSUPPORTED"}]}, status=404)
        key = (_official(route["name"]), route["ref"])
        if request.method == "PUT":
            body = await request.read()
            if not body.startswith(b"{"):
                error = {"errors": [{"code": "MANIFEST_INVALID", "message": "not JSON"}]}
                return web.json_response(error, status=400)
            m = Manifest(body, request.content_type, Digest.of(body))
            self.put(route["name"], route["ref"], m)
            return web.Response(status=201, headers={"Docker-Content-Digest": str(m.digest)})
        found = self.manifests.get(key)
        if found is None:
            error = {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}
            return web.json_response(error, status=404)
        headers = {"Content-Type": found.media_type, "Docker-Content-Digest": str(found.digest)}
        if request.method == "HEAD" and not self.head_digest:
            del headers["Docker-Content-Digest"]
        if request.method == "HEAD" and not self.head_length:
            response = web.StreamResponse(headers=headers)  # aiohttp then sends no length
            await response.prepare(request)
            await response.write_eof()
            return response
        return web.Response(body=found.body, headers=headers)


def _official(repository: str) -> str:
    return repository if "/" in repository else "library/" + repository


class Rewritten:
    """The real upstream client, every `https://<host>` sent to the loopback registry."""

    def __init__(self, client: UpstreamClient, port: int) -> None:
        self._client = client
        self._port = port

    def _local(self, url: str) -> str:
        return re.sub(r"^https://([^/]+)", rf"http://\1:{self._port}", url)

    async def fetch(self, method: str, url: str, headers: Mapping[str, str]) -> Reply:
        return await self._client.fetch(method, self._local(url), headers)

    async def fetch_anonymous(self, method: str, url: str, accept: str | None = None) -> Reply:
        return await self._client.fetch_anonymous(method, self._local(url), accept)

    async def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: AsyncIterator[bytes] | None = None,
    ) -> Reply:
        return await self._client.send(method, self._local(url), headers, body)


@dataclass
class Stack:
    client: TestClient[web.Request, web.Application]
    registry: FakeRegistry
    files: FileBlobStore
    index: SqliteIndex
    metrics: Metrics
    audit: list[dict[str, Any]]
    make_app: Callable[[Bridge | None], web.Application]
    """Another proxy application over the same cache (for a serving loop's `Bridge`)."""

    async def ask(
        self, path: str, method: str = "GET", host: str = HOST, body: bytes | None = None,
        **headers: str,
    ) -> ClientResponse:  # fmt: skip
        fields = {"Host": host, **{k.replace("_", "-"): v for k, v in headers.items()}}
        return await self.client.request(method, path, headers=fields, data=body)

    def answers(self, outcome: str, registry: str = HOST) -> float:
        labels = {"registry": registry, "kind": "manifest", "outcome": outcome}
        value = self.metrics.registry.get_sample_value("regcache_cache_answers_total", labels)
        return value or 0.0

    def served(self, source: str, registry: str = HOST) -> float:
        labels = {"registry": registry, "source": source}
        return self.metrics.registry.get_sample_value("regcache_served_bytes_total", labels) or 0.0


_CONFIGS = [
    RegistryConfig("reg.test", (HostPattern(HOST),), push=(PushRule(("frozen/*",), DENY),)),
    RegistryConfig("docker.io", (HostPattern(HUB), HostPattern(HUB_ALIAS)),
                   push=(PushRule(("busybox",), DENY),)),
    RegistryConfig("ttl.test", (HostPattern(TTL_HOST),), tag_ttl_s=300),
]  # fmt: skip
REGISTRIES = Registries(_CONFIGS)


@contextlib.asynccontextmanager
async def stack(
    tmp_path: Path, aiohttp_client: Any, local: LocalConfig | None = None
) -> AsyncIterator[Stack]:
    """The stack over a fresh store; everything it opened is closed on the way out.
    With `local` (its hosts: `LOCAL`), the local registry is served too."""
    registry = FakeRegistry()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", registry.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    policy = TargetPolicy(HostSet.of([HOST, HUB, HUB_ALIAS, TTL_HOST]))
    session = UpstreamClient(loopback, None, connect_timeout_s=5, read_timeout_s=5, targets=policy)
    files = FileBlobStore(tmp_path / "store")
    files.prepare()
    index = await SqliteIndex.open(tmp_path / "index.sqlite")
    try:
        upstream = Rewritten(session, server.port or 0)
        gate = AccessGate(upstream, index, files)  # type: ignore[arg-type]
        cache = RegistryCache(files, index, upstream, gate, NegativeCache(30))  # type: ignore[arg-type]
        metrics, audit = Metrics(), []

        local = local and replace(local, hosts=(Hostname(LOCAL),))
        built = None if local is None else build_local(local, index, files, Unbounded())
        served = None if built is None else (built.registry, built.access)
        registries = Registries(_CONFIGS, local=local.hosts if local else ())

        def make_app(bridge: Bridge | None) -> web.Application:
            sites = site_resolver(registries)
            return create_app(cache, upstream, sites, metrics, audit.append, bridge,  # type: ignore[arg-type]
                              local=served)  # fmt: skip

        client = await aiohttp_client(make_app(None))
        yield Stack(client, registry, files, index, metrics, audit, make_app)
    finally:
        await _probes_done()
        await index.close()
        await session.close()
        await server.close()


async def _probes_done() -> None:
    """The access gate's probes the requests started end (or are cut after 5 s) before
    the index they write to closes, also when a test failed half way."""
    probes = [t for t in asyncio.all_tasks() if t.get_name().startswith("access-probe")]
    if probes:
        _, late = await asyncio.wait(probes, timeout=5)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
