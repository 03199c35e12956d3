"""An index fetched for one client's pull brings its child manifests into the store in
the background, with that client's credentials, once each, and only while upstream's
rate-limit budget (its answer to the index's GET) keeps `KEEP_REMAINING` after them."""

from __future__ import annotations

import asyncio
import hashlib
import json

import pytest

from appliance.cache.answers import Answer, Refused, Stored, Target
from appliance.cache.children import KEEP_REMAINING, Children, child_manifests
from appliance.cache.service import RegistryCache
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import OCI_INDEX, OCI_MANIFEST
from appliance.store.files import FileBlobStore
from tests.cache.alpine import ORIGIN, target
from tests.cache.fakes import FakeUpstream

URL = f"{ORIGIN}/v2/library/alpine/manifests"
CHILDREN = [json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "n": i}).encode()
            for i in range(3)]  # fmt: skip


def _digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


INDEX = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
    {"mediaType": OCI_MANIFEST, "digest": _digest(c), "size": len(c),
     "platform": {"os": "linux", "architecture": a}}
    for c, a in zip(CHILDREN, ("amd64", "arm64", "s390x"), strict=True)
]}).encode()  # fmt: skip


def _routes(upstream: FakeUpstream, remaining: str | None = None) -> None:
    limits = {} if remaining is None else {"ratelimit_remaining": remaining}
    upstream.add("HEAD", f"{URL}/3", 200, Docker_Content_Digest=_digest(INDEX),
                 Content_Type=OCI_INDEX, Content_Length=str(len(INDEX)))  # fmt: skip
    upstream.add("GET", f"{URL}/{_digest(INDEX)}", 200, INDEX, Content_Type=OCI_INDEX,
                 Docker_Content_Digest=_digest(INDEX), **limits)  # fmt: skip
    for child in CHILDREN:
        upstream.add("GET", f"{URL}/{_digest(child)}", 200, child, Content_Type=OCI_MANIFEST,
                     Docker_Content_Digest=_digest(child))  # fmt: skip


async def _settled(upstream: FakeUpstream) -> list[str]:
    """The GETs upstream got, once the background work has had its turn."""
    for _ in range(100):  # bounded: 100 turns of the loop at most
        before = len(upstream.calls)
        await asyncio.sleep(0.01)
        if len(upstream.calls) == before:
            break
    return [url.rsplit("/", 1)[-1] for method, url, _ in upstream.calls if method == "GET"]


def test_the_children_are_the_indexs_manifests_in_order_without_repeats() -> None:
    assert child_manifests(INDEX) == [Digest.parse(_digest(c)) for c in CHILDREN]
    doubled = json.dumps({"manifests": [{"digest": _digest(b"a")}, {"digest": _digest(b"a")},
                                        {"digest": "nope"}, "x", {}]}).encode()  # fmt: skip
    assert child_manifests(doubled) == [Digest.of(b"a")]
    assert child_manifests(b"not json") == [] and child_manifests(b"[]") == []


async def test_one_platform_pulled_stores_every_childs_manifest(
    parts: tuple[RegistryCache, FakeUpstream, FileBlobStore],
) -> None:
    cache, upstream, _ = parts
    _routes(upstream)
    index = await cache.manifest(target(), "3", head=False)
    assert isinstance(index, Stored) and index.digest == Digest.parse(_digest(INDEX))
    gets = await _settled(upstream)
    assert sorted(gets) == sorted([_digest(INDEX), *map(_digest, CHILDREN)])  # each once
    wanted = {_digest(c) for c in CHILDREN}
    children = [
        h for m, url, h in upstream.calls if m == "GET" and url.rsplit("/", 1)[-1] in wanted
    ]
    assert [h.get("Authorization") for h in children] == ["Bearer t"] * 3  # the client's
    upstream.unreachable.add("registry-1.docker.io")  # an outage: all of them are stored
    for child in CHILDREN:
        stored = await cache.manifest(target(), Digest.parse(_digest(child)), head=False)
        assert isinstance(stored, Stored) and stored.path.read_bytes() == child
    assert children


async def test_children_already_stored_are_not_fetched_again(
    parts: tuple[RegistryCache, FakeUpstream, FileBlobStore],
) -> None:
    cache, upstream, _ = parts
    _routes(upstream)
    await cache.manifest(target(), Digest.parse(_digest(CHILDREN[0])), head=False)
    await cache.manifest(target(), "3", head=False)
    gets = await _settled(upstream)
    assert gets.count(_digest(CHILDREN[0])) == 1 and len(gets) == 4


@pytest.mark.parametrize(("remaining", "fetched"), [
    (f"{KEEP_REMAINING + 3};w=21600", 3),  # exactly enough left after them
    (f"{KEEP_REMAINING + 2};w=21600", 2),  # the last one would eat into the reserve
    (f"{KEEP_REMAINING};w=21600", 0),
    (None, 3),  # a registry without a rate limit
])  # fmt: skip
async def test_children_spend_nothing_of_the_last_of_the_rate_limit(
    parts: tuple[RegistryCache, FakeUpstream, FileBlobStore], remaining: str | None, fetched: int
) -> None:
    cache, upstream, _ = parts
    _routes(upstream, remaining)
    await cache.manifest(target(), "3", head=False)
    gets = await _settled(upstream)
    assert len(gets) - 1 == fetched


async def test_indexes_stored_at_once_share_one_budget() -> None:
    """A compose pull stores several indexes together: their children are fetched in
    turn, each run counting what the ones before it spent since the answer it saw; an
    answer seen later (the budget refilled) counts as it says."""
    fetched: list[Digest] = []

    async def fetch(_target: Target, digest: Digest) -> Answer:
        fetched.append(digest)
        await asyncio.sleep(0)
        return Refused(404)  # spent all the same

    async def stored(_digest: Digest) -> None:
        return None

    now = [0.0]
    children = Children(fetch, stored, clock=lambda: now[0])
    headers = {"ratelimit-remaining": f"{KEEP_REMAINING + 3};w=21600"}
    other = json.dumps({"manifests": [{"digest": _digest(b"o%d" % i)} for i in range(3)]})
    children.index_stored(target(), headers, INDEX)
    children.index_stored(target(), headers, other.encode())
    for _ in range(100):  # bounded
        await asyncio.sleep(0)
    assert len(fetched) == 3  # not 6: the reserve is kept
    now[0] = 1.0  # a later answer: upstream's count, with the refill in it
    children.index_stored(target(), headers, other.encode())
    for _ in range(100):
        await asyncio.sleep(0)
    assert len(fetched) == 6
