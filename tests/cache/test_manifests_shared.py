"""Manifests with a tier shared by several gateways (the `SharedTier` port faked): one
asked for by digest is read from the tier, not upstream, and still gated per client; one
fetched upstream is shared; wrong bytes under its name are distrusted; the managed
mirror's copier finds the tier's copies too. Against a real store and index."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from appliance.cache.access import AccessGate
from appliance.cache.answers import Refused, Stored, Target
from appliance.cache.ports import MirrorAnswer
from appliance.cache.service import RegistryCache
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import OCI_MANIFEST
from appliance.store.files import FileBlobStore
from appliance.store.index import SqliteIndex
from tests.cache.alpine import M_DIGEST, MANIFEST, ORIGIN, target
from tests.cache.fakes import FakeTier, FakeUpstream

DIGEST = Digest.parse(M_DIGEST)
URL = f"{ORIGIN}/v2/library/alpine/manifests/{M_DIGEST}"


@pytest.fixture
async def rig(
    tmp_path: Path,
) -> AsyncIterator[tuple[RegistryCache, FakeUpstream, FakeTier, SqliteIndex]]:
    files = FileBlobStore(tmp_path)
    files.prepare()
    index = await SqliteIndex.open(tmp_path / "index.sqlite")
    upstream, tier = FakeUpstream(), FakeTier()
    cache = RegistryCache(files, index, upstream, AccessGate(upstream), shared=tier)  # type: ignore[arg-type]
    yield cache, upstream, tier, index
    await index.close()


async def test_a_manifest_the_tier_holds_is_not_fetched_upstream(rig) -> None:  # type: ignore[no-untyped-def]
    cache, upstream, tier, index = rig
    tier.manifests[DIGEST] = (MANIFEST, OCI_MANIFEST)
    upstream.add("HEAD", URL, 200, auth="Bearer t", Docker_Content_Digest=M_DIGEST,
                 Content_Length=str(len(MANIFEST)))  # fmt: skip
    answer = await cache.manifest(target(), DIGEST, head=False)
    assert isinstance(answer, Stored) and answer.media_type == OCI_MANIFEST
    assert upstream.count("GET") == 0 and upstream.count("HEAD") == 1  # the gate asked
    assert tier.shared_manifests == []  # it came from there: not uploaded back
    assert await index.member_paths("registry-1.docker.io", "library/alpine", DIGEST) == []


async def test_a_client_upstream_refuses_gets_no_manifest_from_the_tier(rig) -> None:  # type: ignore[no-untyped-def]
    cache, upstream, tier, _ = rig
    tier.manifests[DIGEST] = (MANIFEST, OCI_MANIFEST)
    upstream.add("HEAD", URL, 404, auth="Bearer nobody")
    other = Target(ORIGIN, "library/alpine", {"Authorization": "Bearer nobody"}, frozenset())
    answer = await cache.manifest(other, DIGEST, head=False)
    assert isinstance(answer, Refused) and answer.status == 404
    assert upstream.count("GET") == 0


async def test_a_manifest_fetched_upstream_is_shared(rig) -> None:  # type: ignore[no-untyped-def]
    cache, upstream, tier, _ = rig
    upstream.add("GET", URL, 200, MANIFEST, Content_Type=OCI_MANIFEST)
    assert isinstance(await cache.manifest(target(), DIGEST, head=False), Stored)
    assert tier.shared_manifests == [DIGEST]


async def test_wrong_bytes_in_the_tier_are_distrusted_and_upstream_asked(rig) -> None:  # type: ignore[no-untyped-def]
    cache, upstream, tier, _ = rig
    tier.manifests[DIGEST] = (MANIFEST + b" ", OCI_MANIFEST)
    upstream.add("GET", URL, 200, MANIFEST, Content_Type=OCI_MANIFEST)
    assert isinstance(await cache.manifest(target(), DIGEST, head=False), Stored)
    assert tier.distrusted == [DIGEST] and upstream.count("GET") == 1


async def test_the_mirror_finds_the_tiers_copy(rig) -> None:  # type: ignore[no-untyped-def]
    cache, upstream, tier, _ = rig
    assert await cache.manifest_body(DIGEST) is None
    tier.manifests[DIGEST] = (MANIFEST, OCI_MANIFEST)
    assert await cache.manifest_body(DIGEST) == (MANIFEST, OCI_MANIFEST)
    tier.manifests.clear()
    assert await cache.manifest_body(DIGEST) == (MANIFEST, OCI_MANIFEST)  # kept here now
    assert upstream.calls == []


class OneMirroredTag:
    """The managed mirror's view with `library/alpine:3` mirrored at DIGEST."""

    def tag(self, host: str, repository: str, tag: str) -> MirrorAnswer | None:
        return MirrorAnswer(DIGEST, network=True) if tag == "3" else None

    def opens(self, host: str, repository: str, digest: Digest) -> bool:
        return False


async def test_a_tag_another_gateway_moved_is_served_from_the_tiers_copy(tmp_path: Path) -> None:
    files = FileBlobStore(tmp_path)
    files.prepare()
    index = await SqliteIndex.open(tmp_path / "index.sqlite")
    upstream, tier = FakeUpstream(), FakeTier()
    tier.manifests[DIGEST] = (MANIFEST, OCI_MANIFEST)
    cache = RegistryCache(files, index, upstream, AccessGate(upstream), shared=tier,  # type: ignore[arg-type]
                          mirror=OneMirroredTag())  # fmt: skip
    try:
        answer = await cache.manifest(target(), "3", head=False)
        assert isinstance(answer, Stored) and answer.digest == DIGEST
        assert upstream.calls == []  # neither the tag nor the manifest asked upstream
    finally:
        await index.close()
