"""Fills with a tier shared by several gateways (the `SharedTier` port faked): a blob the
tier holds is read from it, never upstream, and still gated per client; one fetched
upstream reaches the tier whole and only once verified; a tier body that does not
verify is distrusted; with `redirect`, a client the gate lets through is sent to the
bucket for what it holds. Against a real store and index."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.cache.access import AccessGate
from appliance.cache.answers import Filling, Redirected, Refused, Stored, Target
from appliance.cache.fill import FillFailed, FillState
from appliance.cache.service import RegistryCache
from appliance.store.files import FileBlobStore
from appliance.store.index import SqliteIndex
from tests.cache.alpine import B_DIGEST, BLOB, ORIGIN, target
from tests.cache.fakes import FakeTier, FakeUpstream, settled

URL = f"{ORIGIN}/v2/library/alpine/blobs/{B_DIGEST}"


@dataclass
class Rig:
    cache: RegistryCache
    upstream: FakeUpstream
    tier: FakeTier
    files: FileBlobStore


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    files = FileBlobStore(tmp_path)
    files.prepare()
    index = await SqliteIndex.open(tmp_path / "index.sqlite")
    upstream, tier = FakeUpstream(), FakeTier()
    cache = RegistryCache(files, index, upstream, AccessGate(upstream), shared=tier)  # type: ignore[arg-type]
    yield Rig(cache, upstream, tier, files)
    await index.close()


async def drain(answer: object) -> bytes:
    assert isinstance(answer, Filling), answer
    return b"".join([c async for c in answer.fill.stream(0, len(BLOB))])


def as_(token: str) -> Target:
    return Target(ORIGIN, "library/alpine", {"Authorization": token}, frozenset())


async def test_a_blob_the_tier_holds_is_read_from_it_not_upstream(rig: Rig) -> None:
    rig.tier.objects[B_DIGEST] = BLOB
    rig.upstream.add("HEAD", URL, 200, auth="Bearer t", Content_Length=str(len(BLOB)),
                     Docker_Content_Digest=str(B_DIGEST))  # fmt: skip
    answer = await rig.cache.blob(target(), B_DIGEST, head=False)
    assert await drain(answer) == BLOB
    assert isinstance(answer, Filling)
    await settled(answer.fill)
    assert rig.upstream.count("GET") == 0
    assert rig.files.path_for(B_DIGEST).read_bytes() == BLOB  # backfilled here
    assert isinstance(await rig.cache.blob(target(), B_DIGEST, head=False), Stored)
    assert rig.tier.finds == 1


async def test_a_client_upstream_refuses_gets_nothing_from_the_tier(rig: Rig) -> None:
    rig.tier.objects[B_DIGEST] = BLOB
    rig.upstream.add("HEAD", URL, 401, auth="Bearer other", WWW_Authenticate='Bearer realm="r"')
    answer = await rig.cache.blob(as_("Bearer other"), B_DIGEST, head=False)
    assert answer == Refused(401, 'Bearer realm="r"')
    assert rig.upstream.count("GET") == 0


async def test_an_upstream_fill_reaches_the_tier_whole_and_only_once_verified(rig: Rig) -> None:
    reply = rig.upstream.add("GET", URL, 200, BLOB, Content_Length=str(len(BLOB)))
    reply.gate = asyncio.Event()
    answer = await rig.cache.blob(target(), B_DIGEST, head=False)
    assert isinstance(answer, Filling)
    rig.tier.watching = answer.fill
    await asyncio.sleep(0.05)
    assert B_DIGEST not in rig.tier.objects  # half of it is in: nothing shared yet
    reply.gate.set()
    assert await drain(answer) == BLOB
    await settled(answer.fill)
    assert rig.tier.objects[B_DIGEST] == BLOB
    assert rig.tier.ended_in[0] in (FillState.VERIFIED, FillState.DONE)
    assert rig.upstream.count("GET") == 1


async def test_a_body_that_does_not_verify_is_never_shared(rig: Rig) -> None:
    wrong = BLOB[:-1] + b"\x00"
    rig.upstream.add("GET", URL, 200, wrong, Content_Length=str(len(wrong)))
    answer = await rig.cache.blob(target(), B_DIGEST, head=False)
    assert isinstance(answer, Filling)
    with pytest.raises(FillFailed):
        await drain(answer)
    await settled(answer.fill)
    assert B_DIGEST not in rig.tier.objects
    assert rig.tier.dropped and "hashes to" in rig.tier.dropped[0][1]


async def test_no_body_from_upstream_lets_the_tier_go(rig: Rig) -> None:
    rig.upstream.add("GET", URL, 401, auth="Bearer t", WWW_Authenticate='Bearer realm="r"')
    assert await rig.cache.blob(target(), B_DIGEST, head=False) == Refused(401, 'Bearer realm="r"')
    assert rig.tier.abandoned == [B_DIGEST]


async def test_a_tier_body_that_does_not_verify_is_distrusted(rig: Rig) -> None:
    rig.tier.objects[B_DIGEST] = BLOB[:-1] + b"\x00"
    rig.upstream.add("HEAD", URL, 200, auth="Bearer t", Content_Length=str(len(BLOB)),
                     Docker_Content_Digest=str(B_DIGEST))  # fmt: skip
    rig.upstream.add("GET", URL, 200, BLOB, Content_Length=str(len(BLOB)))
    answer = await rig.cache.blob(target(), B_DIGEST, head=False)
    with pytest.raises(FillFailed):
        await drain(answer)
    assert isinstance(answer, Filling)
    await settled(answer.fill)
    assert rig.tier.distrusted == [B_DIGEST]
    again = await rig.cache.blob(target(), B_DIGEST, head=False)  # now from upstream
    assert await drain(again) == BLOB
    assert rig.upstream.count("GET") == 1


async def test_with_redirect_a_blob_the_tier_holds_is_a_redirect_through_the_gate(
    rig: Rig,
) -> None:
    rig.tier.objects[B_DIGEST] = BLOB
    rig.tier.redirect = True
    rig.upstream.add("HEAD", URL, 200, auth="Bearer t", Content_Length=str(len(BLOB)),
                     Docker_Content_Digest=str(B_DIGEST))  # fmt: skip
    rig.upstream.add("HEAD", URL, 401, auth="Bearer other", WWW_Authenticate='Bearer realm="r"')
    answer = await rig.cache.blob(target(), B_DIGEST, head=False)
    assert answer == Redirected(B_DIGEST, len(BLOB), f"https://bucket.example/{B_DIGEST.hex}"
                                "?X-Amz-Signature=s")  # fmt: skip
    refused = await rig.cache.blob(as_("Bearer other"), B_DIGEST, head=False)
    assert refused == Refused(401, 'Bearer realm="r"')  # no URL for a client upstream refuses
    assert rig.tier.redirects == 1  # only the client sent there is counted
    assert rig.tier.finds == 0 and rig.upstream.count("GET") == 0
    assert rig.files.size_of(B_DIGEST) is None  # the bytes go from the bucket to the client


async def test_with_redirect_a_blob_stored_here_or_missing_in_the_tier_is_not(rig: Rig) -> None:
    rig.tier.redirect = True
    rig.upstream.add("GET", URL, 200, BLOB, Content_Length=str(len(BLOB)))
    first = await rig.cache.blob(target(), B_DIGEST, head=False)  # not in the bucket: a fill
    assert await drain(first) == BLOB
    assert isinstance(first, Filling)
    await settled(first.fill)
    assert B_DIGEST in rig.tier.objects
    assert isinstance(await rig.cache.blob(target(), B_DIGEST, head=False), Stored)
