"""The cache facade against a real store and index, with the upstream port faked: what
needs no upstream at all, and what a client HEAD costs."""

from __future__ import annotations

from appliance.cache.answers import Described, Refused, Stored
from appliance.oci.digest import Digest
from tests.cache.alpine import B_DIGEST, M_DIGEST, tag_routes, target


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
