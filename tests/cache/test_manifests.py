"""Manifests fetched upstream, verified and stored; against a real store and index with
the upstream port faked."""

from __future__ import annotations

import asyncio

import pytest

from appliance.cache.answers import Stored, UpstreamMismatch
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import OCI_MANIFEST
from tests.cache.alpine import M_DIGEST, MANIFEST, ORIGIN, target


async def test_manifest_with_wrong_digest_is_refused_and_not_stored(parts) -> None:  # type: ignore[no-untyped-def]
    cache, upstream, files = parts
    url = f"{ORIGIN}/v2/library/alpine/manifests/{M_DIGEST}"
    upstream.add("GET", url, 200, MANIFEST + b" ", Content_Type=OCI_MANIFEST)
    with pytest.raises(UpstreamMismatch):
        await cache.manifest(target(), Digest.parse(M_DIGEST), head=False)
    assert files.size_of(Digest.parse(M_DIGEST)) is None


async def test_a_manifest_sent_as_plain_json_is_stored_with_its_own_media_type(parts) -> None:  # type: ignore[no-untyped-def]
    cache, upstream, files = parts
    url = f"{ORIGIN}/v2/library/alpine/manifests/{M_DIGEST}"
    upstream.add("GET", url, 200, MANIFEST, Content_Type="application/json")
    answer = await cache.manifest(target(), Digest.parse(M_DIGEST), head=False)
    assert isinstance(answer, Stored) and answer.media_type == OCI_MANIFEST
    assert files.path_for(Digest.parse(M_DIGEST)).read_bytes() == MANIFEST


async def test_concurrent_gets_of_one_manifest_digest_share_one_upstream_get(parts) -> None:  # type: ignore[no-untyped-def]
    cache, upstream, _ = parts
    url = f"{ORIGIN}/v2/library/alpine/manifests/{M_DIGEST}"
    reply = upstream.add("GET", url, 200, MANIFEST, Content_Type=OCI_MANIFEST)
    reply.gate = asyncio.Event()
    asked = [
        asyncio.ensure_future(cache.manifest(target(), Digest.parse(M_DIGEST), head=False))
        for _ in range(4)
    ]
    await asyncio.sleep(0.01)  # all four are waiting for the one body
    reply.gate.set()
    answers = await asyncio.gather(*asked)
    assert all(isinstance(a, Stored) and a.digest == Digest.parse(M_DIGEST) for a in answers)
    assert upstream.count("GET") == 1
