"""The cache facade against a real store and index, with the upstream port faked: what
needs no upstream at all, and what a client HEAD costs; the managed mirror's tags, and
what the cache stores for the mirror's copies."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

import pytest

from appliance.cache.answers import Described, Filling, Refused, Stored, Target
from appliance.cache.blobs import BlobRefused
from appliance.cache.fill import FillFailed
from appliance.cache.ports import UpstreamReply, UpstreamUnavailable
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from tests.cache.alpine import B_DIGEST, M_DIGEST, tag_routes, target
from tests.mirror.images import image, serve
from tests.mirror.rig import ALPINE, HUB, Rig


async def test_client_head_never_becomes_an_upstream_get(parts) -> None:  # type: ignore[no-untyped-def]
    cache, upstream, _ = parts
    tag_routes(upstream)
    answer = await cache.manifest(target(), "3", head=True)
    assert isinstance(answer, Described) and str(answer.digest) == M_DIGEST
    assert upstream.count("GET") == 0
    blob = await cache.blob(target(), B_DIGEST, head=True)
    assert blob == Refused(404) and upstream.count("GET") == 0


async def test_digest_in_store_needs_no_upstream(parts) -> None:  # type: ignore[no-untyped-def]
    cache, upstream, _ = parts
    tag_routes(upstream)
    await cache.manifest(target(), "3", head=False)
    calls = len(upstream.calls)
    again = await cache.manifest(target(), Digest.parse(M_DIGEST), head=False)
    assert isinstance(again, Stored) and len(upstream.calls) == calls


# The managed mirror's tags (issue #16), over the real mirror view and copier.

MIRRORED = image("mirrored")
ANYONE = frozenset({OCI_MANIFEST, OCI_INDEX})


def client(token: str | None, repository: str = "library/alpine",
           accept: frozenset[str] = ANYONE) -> Target:  # fmt: skip
    return Target(HUB, repository, {"Authorization": token} if token else {}, accept)


async def test_a_mirrored_tag_is_served_to_anyone_with_no_upstream_request(rig: Rig) -> None:
    await rig.mirror(MIRRORED)
    rig.upstream.calls.clear()
    for token in (None, "Bearer mallory"):
        for repository in ("library/alpine", "alpine"):
            for head in (False, True):
                answer = await rig.cache.manifest(client(token, repository), "3.20", head=head)
                assert isinstance(answer, Stored) and answer.digest == MIRRORED.digest
            for digest, body in MIRRORED.blobs.items():
                blob = await rig.cache.blob(client(token, repository), digest, head=False)
                assert isinstance(blob, Stored) and blob.path.read_bytes() == body
    assert rig.upstream.calls == []


async def test_a_mirrored_tag_is_served_while_upstream_is_down(rig: Rig) -> None:
    await rig.mirror(MIRRORED)
    rig.upstream.unreachable.add("registry-1.docker.io")
    answer = await rig.cache.manifest(client(None), "3.20", head=False)
    assert isinstance(answer, Stored) and answer.digest == MIRRORED.digest


async def test_a_mirrored_tag_serves_what_the_mirror_decided_not_upstream(rig: Rig) -> None:
    await rig.mirror(MIRRORED)
    serve(rig.upstream, ALPINE, image("moved upstream"), "3.20")
    rig.upstream.calls.clear()
    answer = await rig.cache.manifest(client(None), "3.20", head=False)
    assert isinstance(answer, Stored) and answer.digest == MIRRORED.digest
    other = await rig.cache.manifest(client(None), "3.19", head=False)  # not mirrored: asked
    assert isinstance(other, Refused) and rig.upstream.count("HEAD") == 1


async def private_mirror(rig: Rig) -> None:
    """MIRRORED copied with regcache's credentials from a source anonymous pulls are
    refused: access `upstream`. Upstream gives it to alice; mallory gets a 404."""
    rig.mirror_upstream.own = "Basic robot"
    rig.upstream.add("HEAD", f"{ALPINE}/manifests/3.20", 401, auth="")
    await rig.mirror(MIRRORED)
    for digest in [MIRRORED.digest, *MIRRORED.blobs]:
        kind = "manifests" if digest == MIRRORED.digest else "blobs"
        for method in ("HEAD", "GET"):
            rig.upstream.add(method, f"{ALPINE}/{kind}/{digest}", 401, auth="")
            rig.upstream.add(method, f"{ALPINE}/{kind}/{digest}", 404, auth="Bearer mallory")
    assert (await rig.index.mirrored_tags())[0].access == "upstream"


async def test_an_upstream_access_tag_is_refused_to_strangers_and_served_to_its_owner(
    rig: Rig,
) -> None:
    await private_mirror(rig)
    rig.upstream.calls.clear()
    layer = next(iter(MIRRORED.blobs))
    for token, status in ((None, 401), ("Bearer mallory", 404)):
        for head in (False, True):
            answer = await rig.cache.manifest(client(token), "3.20", head=head)
            assert isinstance(answer, Refused) and answer.status == status, (token, answer)
        refused = await rig.cache.blob(client(token), layer, head=False)
        assert isinstance(refused, Refused) and refused.status == status
    # Upstream was asked with the stranger's own credentials, never regcache's.
    assert {h.get("Authorization") for _, _, h in rig.upstream.calls} == {None, "Bearer mallory"}
    owner = await rig.cache.manifest(client("Bearer alice"), "3.20", head=False)
    assert isinstance(owner, Stored) and owner.digest == MIRRORED.digest
    assert isinstance(await rig.cache.blob(client("Bearer alice"), layer, head=False), Stored)
    assert rig.gets() == []  # nothing fetched: the store answered


async def test_in_an_outage_an_upstream_access_tag_goes_to_its_verified_owner_only(
    rig: Rig,
) -> None:
    await private_mirror(rig)
    assert isinstance(await rig.cache.manifest(client("Bearer alice"), "3.20", head=False),
                      Stored)  # fmt: skip
    rig.upstream.unreachable.add("registry-1.docker.io")
    rig.now[0] += 3600.0  # past the verdict's TTL, within the outage grace
    owner = await rig.cache.manifest(client("Bearer alice"), "3.20", head=False)
    assert isinstance(owner, Stored)
    for token in (None, "Bearer mallory"):
        with pytest.raises(UpstreamUnavailable):
            await rig.cache.manifest(client(token), "3.20", head=False)


async def test_a_mirrored_tag_whose_manifest_left_the_store_is_asked_upstream(rig: Rig) -> None:
    await rig.mirror(MIRRORED)
    rig.files.path_for(MIRRORED.digest).unlink()
    rig.upstream.calls.clear()
    answer = await rig.cache.manifest(client(None), "3.20", head=False)
    assert isinstance(answer, Stored) and answer.digest == MIRRORED.digest
    tag_asks = [m for m, u, _ in rig.upstream.calls if u == f"{ALPINE}/manifests/3.20"]
    assert tag_asks and rig.gets("manifests") == [f"{ALPINE}/manifests/{MIRRORED.digest}"]


async def test_a_client_not_taking_the_mirrored_type_gets_the_normal_path(rig: Rig) -> None:
    await rig.mirror(MIRRORED)
    rig.upstream.calls.clear()
    docker_only = client(None, accept=frozenset({DOCKER_MANIFEST}))
    assert rig.cache.stored_now(docker_only, "3.20", manifest=True) is None
    await rig.cache.manifest(docker_only, "3.20", head=False)
    assert [m for m, u, _ in rig.upstream.calls if u == f"{ALPINE}/manifests/3.20"]  # asked


async def test_keep_blob_fetches_once_then_finds_it_stored(rig: Rig) -> None:
    digest, body = next(iter(MIRRORED.blobs.items()))
    serve(rig.upstream, ALPINE, MIRRORED)

    def fetch() -> Awaitable[UpstreamReply]:
        return rig.upstream.fetch("GET", f"{ALPINE}/blobs/{digest}", {})

    assert await rig.cache.keep_blob(digest, fetch) == len(body)
    assert rig.on_disk(digest) == body and await rig.index.blob(digest) is not None
    assert await rig.cache.keep_blob(digest, fetch) == 0
    assert len(rig.gets("blobs")) == 1


async def test_keep_blob_of_a_stored_blob_asks_nothing(rig: Rig) -> None:
    body = b"stored before, by a pull long done"
    temp = rig.files.create_temp()
    temp.write(body)
    await rig.files.commit(temp, Digest.of(body))
    await rig.index.add_blob(Digest.of(body), len(body), None)

    def fetch() -> Awaitable[UpstreamReply]:
        raise AssertionError("upstream asked for a stored blob")

    assert await rig.cache.keep_blob(Digest.of(body), fetch) == 0
    assert rig.upstream.calls == []


async def test_keep_blob_joins_a_clients_fill_in_flight(rig: Rig) -> None:
    digest, body = next(iter(MIRRORED.blobs.items()))
    url = f"{ALPINE}/blobs/{digest}"
    serve(rig.upstream, ALPINE, MIRRORED)
    held = rig.upstream.routes[("GET", url, None)]
    held.gate = asyncio.Event()  # the client's body stalls halfway
    filling = await rig.cache.blob(client("Bearer t"), digest, head=False)
    assert isinstance(filling, Filling)
    kept = asyncio.create_task(
        rig.cache.keep_blob(digest, lambda: rig.upstream.fetch("GET", url, {}))
    )
    await asyncio.sleep(0.05)
    assert not kept.done()  # waits for the fill, does not fetch its own
    held.gate.set()
    assert b"".join([c async for c in filling.fill.stream(0, len(body))]) == body
    assert await asyncio.wait_for(kept, 10) == 0  # fetched by the client's fill
    assert len(rig.gets("blobs")) == 1 and rig.on_disk(digest) == body


async def test_keep_blob_says_what_upstream_refused(rig: Rig) -> None:
    digest = Digest.of(b"not there")
    url = f"{ALPINE}/blobs/{digest}"
    with pytest.raises(BlobRefused) as refused:
        await rig.cache.keep_blob(digest, lambda: rig.upstream.fetch("GET", url, {}))
    assert refused.value.status == 404
    assert rig.on_disk(digest) is None and await rig.index.blob(digest) is None


async def test_keep_blob_with_other_bytes_keeps_nothing(rig: Rig) -> None:
    digest = Digest.of(b"the real bytes")
    url = f"{ALPINE}/blobs/{digest}"
    rig.upstream.add("GET", url, 200, b"other bytes", Content_Length="11")
    with pytest.raises(FillFailed):
        await rig.cache.keep_blob(digest, lambda: rig.upstream.fetch("GET", url, {}))
    assert rig.on_disk(digest) is None and await rig.index.blob(digest) is None


async def test_keep_manifest_stores_and_indexes_it_manifest_body_reads_it_intact(
    rig: Rig,
) -> None:
    source = ("registry-1.docker.io", "library/alpine")
    stored = await rig.cache.keep_manifest(source, MIRRORED.digest, MIRRORED.body, OCI_MANIFEST)
    assert stored.digest == MIRRORED.digest and stored.size == len(MIRRORED.body)
    assert await rig.index.manifest_type(MIRRORED.digest) == OCI_MANIFEST
    assert await rig.cache.manifest_body(MIRRORED.digest) == (MIRRORED.body, OCI_MANIFEST)
    assert await rig.cache.manifest_body(Digest.of(b"never stored")) is None
    path = rig.files.path_for(MIRRORED.digest)
    path.write_bytes(b"X" + MIRRORED.body[1:])  # the same size, other bytes
    assert await rig.cache.manifest_body(MIRRORED.digest) is None
    path.unlink()
    assert await rig.cache.manifest_body(MIRRORED.digest) is None
