"""Hits answered from memory for the serving loops: never more than the full path would
answer, and the same answer."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from appliance.cache.answers import Filling, Stored, Target
from appliance.cache.fill import FillState
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import DOCKER_MANIFEST
from tests.cache.alpine import B_DIGEST, BLOB, M_DIGEST, ORIGIN, tag_routes, target


async def test_hits_from_memory_only_where_the_full_path_would_hit(parts) -> None:  # type: ignore[no-untyped-def]
    """`stored_now` (used by the other serving loops) must never answer what `manifest()`
    or `blob()` would refuse or revalidate; when it answers, it is the same answer."""
    cache, upstream, _ = parts
    base = f"{ORIGIN}/v2/library/alpine"
    tag_routes(upstream)
    # Private to "Bearer t": anonymous asks are refused, so only that client is vouched.
    upstream.add("HEAD", f"{base}/manifests/3", 401, auth="")
    for method in ("HEAD", "GET"):
        upstream.add(method, f"{base}/manifests/{M_DIGEST}", 401, auth="")
        upstream.add(method, f"{base}/blobs/{B_DIGEST}", 401, auth="")
    upstream.add("GET", f"{base}/blobs/{B_DIGEST}", 200, BLOB, Content_Length=str(len(BLOB)))
    digest = Digest.parse(M_DIGEST)
    assert cache.stored_now(target(), digest, manifest=True) is None  # nothing stored yet
    assert isinstance(await cache.manifest(target(), "3", head=False), Stored)
    fill = await cache.blob(target(), B_DIGEST, head=False)
    assert isinstance(fill, Filling)
    async for _ in fill.fill.stream(0, len(BLOB)):
        pass
    for _ in range(200):  # the commit (fsync, rename, index row) follows the last byte
        if fill.fill.state is FillState.DONE:
            break
        await asyncio.sleep(0.01)

    # Rows come into memory when the full path looks them up.
    hit = await cache.manifest(target(), digest, head=False)
    assert isinstance(hit, Stored) and cache.stored_now(target(), digest, manifest=True) == hit
    blob = await cache.blob(target(), B_DIGEST, head=False)
    assert isinstance(blob, Stored)
    assert cache.stored_now(target(), B_DIGEST, manifest=False) == blob
    other = Target(ORIGIN, "library/alpine", {"Authorization": "Bearer other"}, target().accept)
    assert cache.stored_now(other, digest, manifest=True) is None  # not vouched: ask upstream
    assert cache.stored_now(other, B_DIGEST, manifest=False) is None
    assert cache.stored_now(target(), "3", manifest=True) is None  # tag_ttl 0: revalidate
    ttl = Target(ORIGIN, "library/alpine", {"Authorization": "Bearer t"}, target().accept, 3600)
    assert cache.stored_now(ttl, "3", manifest=True) == hit  # within the TTL
    docker_only = replace(ttl, accept=frozenset({DOCKER_MANIFEST}))
    assert cache.stored_now(docker_only, "3", manifest=True) is None  # Accept does not take it
