"""Blob fills with peers (the `Peers` port faked, its owner a scripted upstream): a cold
blob a peer owns is asked of the owner with the client's own request, and neither this
gateway's upstream nor its share of the bucket is involved; an owner that cannot answer
leaves the fill to this gateway; a request a peer relayed is never relayed on. Against a
real store and index."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from appliance.cache.access import AccessGate
from appliance.cache.answers import Filling, Refused, Stored, Target
from appliance.cache.ports import UpstreamUnreachable
from appliance.cache.service import RegistryCache
from appliance.oci.digest import Digest
from appliance.store.files import FileBlobStore
from appliance.store.index import SqliteIndex
from tests.cache.alpine import B_DIGEST, BLOB, ORIGIN, target
from tests.cache.fakes import FakeReply, FakeTier, FakeUpstream, settled

URL = f"{ORIGIN}/v2/library/alpine/blobs/{B_DIGEST}"
OWNER = "10.0.0.2:443"


@dataclass
class FakePeers:
    """One other gateway, `OWNER`, owning every digest while `owning`."""

    owner_side: FakeUpstream = field(default_factory=FakeUpstream)
    owning: bool = True
    down: bool = False
    relayed: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    before_answer: Callable[[], None] = lambda: None
    """Run as the owner is asked (what happens elsewhere meanwhile)."""

    def owner(self, digest: Digest) -> str | None:
        return OWNER if self.owning else None

    async def relay(self, owner: str, url: str, headers: Mapping[str, str]) -> FakeReply:
        self.relayed.append((owner, url, dict(headers)))
        self.before_answer()
        if self.down:
            raise UpstreamUnreachable(f"GET {url} through peer {owner}: refused", "10.0.0.2")
        return await self.owner_side.fetch("GET", url, headers)


@dataclass
class Rig:
    cache: RegistryCache
    upstream: FakeUpstream
    tier: FakeTier
    peers: FakePeers
    files: FileBlobStore


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    files = FileBlobStore(tmp_path)
    files.prepare()
    index = await SqliteIndex.open(tmp_path / "index.sqlite")
    upstream, tier, peers = FakeUpstream(), FakeTier(), FakePeers()
    cache = RegistryCache(files, index, upstream, AccessGate(upstream), shared=tier,  # type: ignore[arg-type]
                          peers=peers)  # fmt: skip
    yield Rig(cache, upstream, tier, peers, files)
    await index.close()


async def drained(answer: object) -> bytes:
    assert isinstance(answer, Filling), answer
    body = b"".join([c async for c in answer.fill.stream(0, len(BLOB))])
    await answer.fill.wait_stored()
    return body


def owner_has_it(rig: Rig) -> None:
    rig.peers.owner_side.add("GET", URL, 200, BLOB, Content_Length=str(len(BLOB)),
                             Docker_Content_Digest=str(B_DIGEST))  # fmt: skip


async def test_a_cold_blob_a_peer_owns_comes_from_the_owner_with_the_clients_request(
    rig: Rig,
) -> None:
    owner_has_it(rig)
    answer = await rig.cache.blob(target(), B_DIGEST, head=False)
    assert await drained(answer) == BLOB
    assert rig.peers.relayed == [(OWNER, URL, {"Authorization": "Bearer t"})]
    assert rig.upstream.calls == []  # this gateway's upstream: never asked
    assert rig.tier.looked == 1 and B_DIGEST not in rig.tier.objects  # the owner shares it
    assert rig.tier.abandoned == []  # no lease was taken here
    assert rig.files.path_for(B_DIGEST).read_bytes() == BLOB
    assert isinstance(await rig.cache.blob(target(), B_DIGEST, head=False), Stored)


async def test_a_blob_the_bucket_holds_is_read_there_not_relayed(rig: Rig) -> None:
    rig.tier.objects[B_DIGEST] = BLOB
    rig.upstream.add("HEAD", URL, 200, auth="Bearer t", Content_Length=str(len(BLOB)),
                     Docker_Content_Digest=str(B_DIGEST))  # fmt: skip
    assert await drained(await rig.cache.blob(target(), B_DIGEST, head=False)) == BLOB
    assert rig.peers.relayed == []
    assert rig.upstream.count("GET") == 0


async def test_an_owner_that_is_down_leaves_the_fill_to_this_gateway(rig: Rig) -> None:
    rig.peers.down = True
    rig.upstream.add("GET", URL, 200, BLOB, Content_Length=str(len(BLOB)))
    answer = await rig.cache.blob(target(), B_DIGEST, head=False)
    assert await drained(answer) == BLOB
    assert len(rig.peers.relayed) == 1
    assert rig.upstream.count("GET") == 1
    assert isinstance(answer, Filling)
    await settled(answer.fill)
    # Looked first (the owner shares it), then led here: this gateway shares it instead.
    assert (rig.tier.looked, rig.tier.finds) == (1, 2)
    assert rig.tier.objects[B_DIGEST] == BLOB


@pytest.mark.parametrize("status", [503, 429])
async def test_an_owner_in_trouble_leaves_the_fill_to_this_gateway(rig: Rig, status: int) -> None:
    rig.peers.owner_side.add("GET", URL, status)
    rig.upstream.add("GET", URL, 200, BLOB, Content_Length=str(len(BLOB)))
    assert await drained(await rig.cache.blob(target(), B_DIGEST, head=False)) == BLOB
    assert len(rig.peers.relayed) == 1
    assert rig.upstream.count("GET") == 1


async def test_the_owners_refusal_is_the_answer(rig: Rig) -> None:
    rig.peers.owner_side.add("GET", URL, 401, WWW_Authenticate='Bearer realm="r"')
    answer = await rig.cache.blob(target(), B_DIGEST, head=False)
    assert answer == Refused(401, 'Bearer realm="r"')
    assert rig.upstream.calls == []


async def test_a_request_a_peer_relayed_is_filled_here_and_shared(rig: Rig) -> None:
    rig.upstream.add("GET", URL, 200, BLOB, Content_Length=str(len(BLOB)))
    relayed = Target(ORIGIN, "library/alpine", {"Authorization": "Bearer t"}, frozenset(),
                     from_peer=True)  # fmt: skip
    answer = await rig.cache.blob(relayed, B_DIGEST, head=False)
    assert await drained(answer) == BLOB
    assert rig.peers.relayed == []
    assert rig.upstream.count("GET") == 1
    assert isinstance(answer, Filling)
    await settled(answer.fill)
    assert rig.tier.objects[B_DIGEST] == BLOB  # led here: the bucket gets it from here


async def test_a_second_client_joins_the_relayed_fill_through_the_gate(rig: Rig) -> None:
    reply = rig.peers.owner_side.add("GET", URL, 200, BLOB, Content_Length=str(len(BLOB)),
                                     Docker_Content_Digest=str(B_DIGEST))  # fmt: skip
    reply.gate = asyncio.Event()
    first = await rig.cache.blob(target(), B_DIGEST, head=False)
    other = Target(ORIGIN, "library/alpine", {"Authorization": "Bearer other"}, frozenset())
    rig.upstream.add("HEAD", URL, 401, auth="Bearer other", WWW_Authenticate='Bearer realm="r"')
    assert await rig.cache.blob(other, B_DIGEST, head=False) == Refused(401, 'Bearer realm="r"')
    reply.gate.set()
    assert await drained(first) == BLOB
    assert len(rig.peers.relayed) == 1


async def test_peers_without_a_bucket_relay_and_fall_back(tmp_path: Path) -> None:
    files = FileBlobStore(tmp_path)
    files.prepare()
    index = await SqliteIndex.open(tmp_path / "index.sqlite")
    upstream, peers = FakeUpstream(), FakePeers()
    cache = RegistryCache(files, index, upstream, AccessGate(upstream), peers=peers)  # type: ignore[arg-type]
    try:
        peers.owner_side.add("GET", URL, 200, BLOB, Content_Length=str(len(BLOB)),
                             Docker_Content_Digest=str(B_DIGEST))  # fmt: skip
        assert await drained(await cache.blob(target(), B_DIGEST, head=False)) == BLOB
        assert upstream.calls == [] and len(peers.relayed) == 1
        other = Digest.of(b"another layer")
        peers.down = True
        upstream.add("GET", f"{ORIGIN}/v2/library/alpine/blobs/{other}", 200, b"another layer",
                     Content_Length="13")  # fmt: skip
        answer = await cache.blob(target(), other, head=False)
        assert isinstance(answer, Filling)
        assert b"".join([c async for c in answer.fill.stream(0, 13)]) == b"another layer"
        assert upstream.count("GET") == 1 and len(peers.relayed) == 2
    finally:
        await index.close()


async def test_after_an_owner_in_trouble_bucket_bytes_still_pass_the_gate(rig: Rig) -> None:
    """The owner answers 503; meanwhile another gateway's fill of the blob reached the
    bucket: those bytes are another's, and a client upstream refuses gets none of them."""
    trouble = rig.peers.owner_side.add("GET", URL, 503)
    rig.peers.before_answer = lambda: rig.tier.objects.__setitem__(B_DIGEST, BLOB)
    stranger = Target(ORIGIN, "library/alpine", {"Authorization": "Bearer other"}, frozenset())
    rig.upstream.add("HEAD", URL, 401, auth="Bearer other", WWW_Authenticate='Bearer realm="r"')
    answer = await rig.cache.blob(stranger, B_DIGEST, head=False)
    assert answer == Refused(401, 'Bearer realm="r"')
    assert trouble.status == 503 and len(rig.peers.relayed) == 1
    assert rig.upstream.count("GET") == 0  # the bytes were the bucket's, not fetched for it
