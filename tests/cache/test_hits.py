"""Hits answered from memory for the serving loops: never more than the full path would
answer, and the same answer; a mirrored tag's too."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from appliance.cache.answers import Filling, Stored, Target
from appliance.cache.fill import FillState
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import DOCKER_MANIFEST, OCI_MANIFEST
from tests.cache.alpine import B_DIGEST, BLOB, M_DIGEST, ORIGIN, tag_routes, target
from tests.mirror.images import image
from tests.mirror.rig import Rig


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


async def test_a_mirrored_tag_is_a_hit_from_memory_with_no_ttl_for_anyone(rig: Rig) -> None:
    """A network-access tag, as the serving loops answer it: no TTL, no verdict needed."""
    served = image("hit")
    await rig.mirror(served)
    rig.upstream.calls.clear()
    for token in (None, "Bearer anyone"):
        who = Target(ORIGIN, "alpine", {"Authorization": token} if token else {},
                     frozenset({OCI_MANIFEST}))  # fmt: skip
        full = await rig.cache.manifest(who, "3.20", head=False)
        assert isinstance(full, Stored)
        assert rig.cache.stored_now(who, "3.20", manifest=True) == full  # the same answer
        layer = next(iter(served.blobs))
        assert isinstance(await rig.cache.blob(who, layer, head=False), Stored)
        assert rig.cache.stored_now(who, layer, manifest=False) is not None
        docker_only = replace(who, accept=frozenset({DOCKER_MANIFEST}))
        assert rig.cache.stored_now(docker_only, "3.20", manifest=True) is None
    assert rig.upstream.calls == []


async def test_an_upstream_access_mirrored_tag_is_a_hit_only_for_a_verified_client(
    rig: Rig,
) -> None:
    served = image("private hit")
    rig.mirror_upstream.own = "Basic robot"
    rig.upstream.add("HEAD", f"{ORIGIN}/v2/library/alpine/manifests/3.20", 401, auth="")
    await rig.mirror(served)
    owner = Target(ORIGIN, "library/alpine", {"Authorization": "Bearer owner"},
                   frozenset({OCI_MANIFEST}))  # fmt: skip
    stranger = replace(owner, headers={})
    assert rig.cache.stored_now(owner, "3.20", manifest=True) is None  # not verified yet
    assert rig.cache.stored_now(stranger, "3.20", manifest=True) is None
    full = await rig.cache.manifest(owner, "3.20", head=False)  # upstream says yes to it
    assert isinstance(full, Stored) and rig.cache.stored_now(owner, "3.20", manifest=True) == full
    assert rig.cache.stored_now(stranger, "3.20", manifest=True) is None
