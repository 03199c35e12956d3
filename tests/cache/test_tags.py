"""Tags against a real store and index, with the upstream port faked: revalidated with a
HEAD, answered within their TTL, only in a media type the client takes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from appliance.cache.answers import Described, Stored, Target
from appliance.cache.ports import UpstreamUnavailable
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import DOCKER_MANIFEST, OCI_MANIFEST
from tests.cache.alpine import M_DIGEST, MANIFEST, ORIGIN, tag_routes, target


async def test_tag_is_revalidated_with_head_and_served_from_the_store(parts) -> None:  # type: ignore[no-untyped-def]
    cache, upstream, _ = parts
    tag_routes(upstream)
    first = await cache.manifest(target(), "3", head=False)
    assert isinstance(first, Stored) and first.path.read_bytes() == MANIFEST
    assert first.media_type == OCI_MANIFEST
    second = await cache.manifest(target(), "3", head=False)
    assert isinstance(second, Stored)
    as_client = [c for c in upstream.calls if c[2].get("Authorization") == "Bearer t"]
    assert [c[0] for c in as_client] == ["HEAD", "GET", "HEAD"]  # one GET, HEADs revalidate
    anonymous = [c for c in upstream.calls if "Authorization" not in c[2]]
    assert [c[0] for c in anonymous] == ["HEAD"]  # the access gate's one public probe


async def test_cached_manifest_only_for_clients_accepting_its_type(parts) -> None:  # type: ignore[no-untyped-def]
    cache, upstream, _ = parts
    tag_routes(upstream)
    await cache.manifest(target(), "3", head=False)
    # With tag_ttl a fresh tag row may skip upstream, but not for a client that cannot take
    # the type: that one is asked upstream with its own Accept.
    docker_only = Target(ORIGIN, "library/alpine", {}, frozenset({DOCKER_MANIFEST}), 3600)
    gets = upstream.count("HEAD")
    await cache.manifest(docker_only, "3", head=False)
    assert upstream.count("HEAD") == gets + 1


async def test_tag_ttl_skips_revalidation(parts) -> None:  # type: ignore[no-untyped-def]
    cache, upstream, _ = parts
    tag_routes(upstream)
    ttl = Target(ORIGIN, "library/alpine", {}, frozenset({OCI_MANIFEST}), 3600)
    await cache.manifest(ttl, "3", head=False)
    calls = len(upstream.calls)
    assert isinstance(await cache.manifest(ttl, "3", head=False), Stored)
    assert len(upstream.calls) == calls


async def test_a_tag_head_is_described_from_upstreams_head_only_if_it_says_the_length(
    parts,  # type: ignore[no-untyped-def]
) -> None:
    """containerd takes a HEAD's Content-Length as the size: a HEAD without one is
    answered from the manifest, fetched and stored to learn it (never with 0)."""
    cache, upstream, _ = parts
    tag_routes(upstream)
    described = await cache.manifest(target(), "3", head=True)
    assert described == Described(Digest.parse(M_DIGEST), len(MANIFEST), OCI_MANIFEST)
    assert upstream.count("GET") == 0  # upstream's HEAD said it all
    head = upstream.routes[("HEAD", f"{ORIGIN}/v2/library/alpine/manifests/3", None)]
    del head.headers["Content-Length"]
    stored = await cache.manifest(target(), "3", head=True)
    assert isinstance(stored, Stored) and stored.size == len(MANIFEST)
    assert upstream.count("GET") == 1


async def test_a_401_to_a_client_whose_token_realm_was_down_serves_the_tag_stale(parts) -> None:  # type: ignore[no-untyped-def]
    """The realm hangs while the registry is up: the client comes with regcache's outage
    token (seen as anonymous), upstream answers its HEAD 401. That is upstream in
    trouble, as a 503 would be: the public tag is served stale. Any other client's 401
    stays upstream's answer."""
    cache, upstream, _ = parts
    tag_routes(upstream)
    anonymous = Target(ORIGIN, "library/alpine", {}, frozenset({OCI_MANIFEST}), 0, 3600)
    assert isinstance(await cache.manifest(anonymous, "3", head=False), Stored)
    for tag in ("3", "4"):
        upstream.add("HEAD", f"{ORIGIN}/v2/library/alpine/manifests/{tag}", 401,
                     Www_Authenticate='Bearer realm="https://auth.example/token"')  # fmt: skip
    stale = await cache.manifest(replace(anonymous, realm_down=True), "3", head=False)
    assert isinstance(stale, Stored) and stale.stale and stale.path.read_bytes() == MANIFEST
    refused = await cache.manifest(anonymous, "3", head=False)
    assert not isinstance(refused, Stored)
    with pytest.raises(UpstreamUnavailable, match="token realm"):  # nothing to serve: 502
        await cache.manifest(replace(anonymous, realm_down=True), "4", head=False)
