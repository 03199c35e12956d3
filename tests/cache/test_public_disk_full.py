"""A full disk under the index: every bookkeeping write of a pull (the public status
learnt beside a tag request, the tag, the manifest and blob rows, the batched accesses)
fails as SQLite fails then, and clients are answered all the same. Through the proxy,
over a real store, with the upstream port faked."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from appliance.cache.access import AccessGate
from appliance.cache.service import RegistryCache
from appliance.oci.mediatypes import OCI_MANIFEST
from appliance.proxy.app import create_app
from appliance.proxy.site import Site
from appliance.store.files import FileBlobStore
from tests.cache.alpine import B_DIGEST, BLOB, M_DIGEST, MANIFEST
from tests.cache.fakes import FakeUpstream
from tests.store.full import FullDiskIndex

ORIGIN = "https://reg.test"
REPOSITORIES = ("lib/a", "lib/b", "lib/c")


@dataclass
class Stack:
    client: TestClient[web.Request, web.Application]
    index: FullDiskIndex
    upstream: FakeUpstream


def routes(upstream: FakeUpstream, repository: str) -> None:
    url = f"{ORIGIN}/v2/{repository}"
    manifest = {"Docker_Content_Digest": M_DIGEST, "Content_Type": OCI_MANIFEST}
    upstream.add("HEAD", f"{url}/manifests/3", 200, Content_Length=str(len(MANIFEST)), **manifest)
    upstream.add("GET", f"{url}/manifests/{M_DIGEST}", 200, MANIFEST, **manifest)
    blob = {"Docker_Content_Digest": str(B_DIGEST), "Content_Length": str(len(BLOB))}
    upstream.add("GET", f"{url}/blobs/{B_DIGEST}", 200, BLOB, **blob)
    upstream.add("HEAD", f"{url}/blobs/{B_DIGEST}", 200, **blob)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    files = FileBlobStore(tmp_path / "store")
    files.prepare()
    index = await FullDiskIndex.open(tmp_path / "index.sqlite")
    upstream = FakeUpstream()
    for repository in REPOSITORIES:
        routes(upstream, repository)
    cache = RegistryCache(files, index, upstream, AccessGate(upstream, index, files))
    site = Site(tag_ttl_s=60, max_stale_s=3600, api=True, label="reg.test")
    app = create_app(cache, upstream, lambda h: site if h == "reg.test" else None)  # type: ignore[arg-type]
    client = TestClient(TestServer(app))
    await client.start_server()
    try:
        yield Stack(client, index, upstream)
    finally:
        await client.close()
        index.full = False
        await index.close()


async def ask(stack: Stack, path: str, auth: str, method: str = "GET") -> tuple[int, int]:
    headers = {"Host": "reg.test", "Authorization": auth, "Accept": OCI_MANIFEST}
    async with stack.client.request(method, path, headers=headers) as response:
        return response.status, len(await response.read())


async def background_done() -> None:
    """Until the public-status probes spawned beside the tag requests have finished
    (bounded: a safety net, not a timing)."""
    async with asyncio.timeout(10):
        while any(t.get_name().startswith("access-probe") for t in asyncio.all_tasks()):
            await asyncio.sleep(0.01)


async def test_pulls_on_a_full_disk_are_answered_and_the_failures_logged_throttled(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    stack.index.full = True
    caplog.set_level(logging.INFO)
    for repository in REPOSITORIES:  # the first request of each repository
        assert await ask(stack, f"/v2/{repository}/manifests/3", "Bearer one") == (200, 76)
        blob = f"/v2/{repository}/blobs/{B_DIGEST}"
        assert await ask(stack, blob, "Bearer one") == (200, len(BLOB))
        assert await ask(stack, blob, "Bearer two", "HEAD") == (200, 0)  # the gate asks
    await background_done()
    assert stack.index.failed >= 2 * len(REPOSITORIES)  # the writes were tried, and failed
    probed = [r for r in caplog.records if "access probed" in r.getMessage()]
    assert len(probed) == len(REPOSITORIES)
    not_saved = [r for r in caplog.records if "public-status-not-saved" in r.getMessage()]
    assert len(not_saved) == 1  # once a minute, not once per repository
    assert "database or disk is full" in not_saved[0].getMessage()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_stored_pull_is_answered_while_its_accesses_cannot_be_written(
    stack: Stack,
) -> None:
    blob = f"/v2/lib/a/blobs/{B_DIGEST}"
    assert await ask(stack, "/v2/lib/a/manifests/3", "Bearer one") == (200, 76)
    assert await ask(stack, blob, "Bearer one") == (200, len(BLOB))
    stack.index.full = True
    for auth in ("Bearer one", "Bearer two", "Bearer one"):  # hits, and a gate check
        assert await ask(stack, blob, auth) == (200, len(BLOB))
