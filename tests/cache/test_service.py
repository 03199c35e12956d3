"""Cache semantics against a real store and index, with the upstream port faked."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from appliance.cache.access import AccessGate
from appliance.cache.answers import Described, Filling, Refused, Stored, Target, UpstreamMismatch
from appliance.cache.fill import FillFailed, FillState
from appliance.cache.service import RegistryCache
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST
from appliance.store.files import FileBlobStore
from appliance.store.index import SqliteIndex
from tests.cache.fakes import FakeUpstream

ORIGIN = "https://registry-1.docker.io"
MANIFEST = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}'
M_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
BLOB = bytes(range(256)) * 4096
B_DIGEST = Digest.of(BLOB)


def target(accept: frozenset[str] = frozenset({OCI_MANIFEST, OCI_INDEX})) -> Target:
    return Target(ORIGIN, "library/alpine", {"Authorization": "Bearer t"}, accept)


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[tuple[RegistryCache, FakeUpstream, FileBlobStore]]:
    files = FileBlobStore(tmp_path)
    files.prepare()
    index = await SqliteIndex.open(tmp_path / "index.sqlite")
    upstream = FakeUpstream()
    cache = RegistryCache(files, index, upstream, AccessGate(upstream))  # type: ignore[arg-type]
    yield cache, upstream, files
    await index.close()


def tag_routes(upstream: FakeUpstream) -> None:
    url = f"{ORIGIN}/v2/library/alpine/manifests"
    upstream.add("HEAD", f"{url}/3", 200, Docker_Content_Digest=M_DIGEST,
                 Content_Type=OCI_MANIFEST, Content_Length=str(len(MANIFEST)))  # fmt: skip
    upstream.add("GET", f"{url}/{M_DIGEST}", 200, MANIFEST, Docker_Content_Digest=M_DIGEST,
                 Content_Type=OCI_MANIFEST)  # fmt: skip


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


async def test_manifest_with_wrong_digest_is_refused_and_not_stored(parts) -> None:  # type: ignore[no-untyped-def]
    cache, upstream, files = parts
    url = f"{ORIGIN}/v2/library/alpine/manifests/{M_DIGEST}"
    upstream.add("GET", url, 200, MANIFEST + b" ", Content_Type=OCI_MANIFEST)
    with pytest.raises(UpstreamMismatch):
        await cache.manifest(target(), Digest.parse(M_DIGEST), head=False)
    assert files.size_of(Digest.parse(M_DIGEST)) is None


async def test_upstream_refusals_are_passed_on_as_status_and_challenge(parts) -> None:  # type: ignore[no-untyped-def]
    cache, upstream, _ = parts
    url = f"{ORIGIN}/v2/library/alpine/manifests/3"
    upstream.add("HEAD", url, 401, WWW_Authenticate='Bearer realm="https://auth.docker.io/token"')
    upstream.add("GET", url, 401, b'{"errors":[]}', WWW_Authenticate='Bearer realm="x"')
    answer = await cache.manifest(target(), "3", head=False)
    assert answer == Refused(401, 'Bearer realm="x"')
    upstream.add("GET", url, 429, b"slow down", Retry_After="60")  # trouble: the same way
    assert await cache.manifest(target(), "3", head=False) == Refused(429, None, "60")
    upstream.add("GET", url, 410, b"odd")  # any other error: the same way too
    assert await cache.manifest(target(), "3", head=False) == Refused(410)


async def test_concurrent_blob_requests_share_one_fetch_and_stream_early(parts) -> None:  # type: ignore[no-untyped-def]
    cache, upstream, files = parts
    reply = upstream.add("GET", f"{ORIGIN}/v2/library/alpine/blobs/{B_DIGEST}", 200, BLOB,
                         Content_Length=str(len(BLOB)))  # fmt: skip
    reply.gate = asyncio.Event()
    answers = await asyncio.gather(*(cache.blob(target(), B_DIGEST, head=False) for _ in range(5)))
    assert upstream.count("GET") == 1
    fills = {a.fill for a in answers if isinstance(a, Filling)}
    assert len(fills) == 1
    fill = fills.pop()
    stream = fill.stream(0, len(BLOB))
    first = await anext(stream)  # bytes flow before the upstream body has ended
    assert first and BLOB.startswith(first) and fill.written < len(BLOB)
    reply.gate.set()
    rest = b"".join([c async for c in stream])
    assert first + rest == BLOB
    for _ in range(200):  # the commit (fsync, rename, index row) follows the last byte
        if fill.state is FillState.DONE:
            break
        await asyncio.sleep(0.01)
    assert isinstance(await cache.blob(target(), B_DIGEST, head=False), Stored)
    assert files.path_for(B_DIGEST).read_bytes() == BLOB


async def test_last_byte_is_held_until_the_digest_checks_out(parts) -> None:  # type: ignore[no-untyped-def]
    cache, upstream, files = parts
    wrong = bytearray(BLOB)
    wrong[-1] ^= 1
    reply = upstream.add("GET", f"{ORIGIN}/v2/library/alpine/blobs/{B_DIGEST}", 200, bytes(wrong),
                         Content_Length=str(len(BLOB)))  # fmt: skip
    reply.gate = asyncio.Event()
    answer = await cache.blob(target(), B_DIGEST, head=False)
    assert isinstance(answer, Filling)
    got = bytearray()
    reply.gate.set()
    with pytest.raises(FillFailed):
        async for chunk in answer.fill.stream(0, len(BLOB)):
            got += chunk
    assert len(got) < len(BLOB)  # never the complete, wrong body
    assert files.size_of(B_DIGEST) is None
    assert list((files.root / "tmp").iterdir()) == []


async def test_a_short_body_is_not_committed(parts) -> None:  # type: ignore[no-untyped-def]
    cache, upstream, files = parts
    upstream.add("GET", f"{ORIGIN}/v2/library/alpine/blobs/{B_DIGEST}", 200, BLOB[:-10],
                 Content_Length=str(len(BLOB)))  # fmt: skip
    answer = await cache.blob(target(), B_DIGEST, head=False)
    assert isinstance(answer, Filling)
    with pytest.raises(FillFailed, match="ended at"):
        _ = [c async for c in answer.fill.stream(0, len(BLOB))]
    assert files.size_of(B_DIGEST) is None


async def test_followers_retry_with_their_own_credentials_when_the_leader_is_refused(parts) -> None:  # type: ignore[no-untyped-def]
    cache, upstream, _ = parts
    url = f"{ORIGIN}/v2/library/alpine/blobs/{B_DIGEST}"
    upstream.add("GET", url, 401, b"{}", auth="Bearer bad", WWW_Authenticate='Bearer realm="x"')
    upstream.add("GET", url, 200, BLOB, auth="Bearer good", Content_Length=str(len(BLOB)))
    upstream.add("HEAD", url, 200, auth="Bearer good")
    upstream.answer_gate = asyncio.Event()

    def as_(token: str) -> Target:
        return Target(ORIGIN, "library/alpine", {"Authorization": token}, frozenset())

    leader = asyncio.ensure_future(cache.blob(as_("Bearer bad"), B_DIGEST, head=False))
    await asyncio.sleep(0.01)  # the leader's fetch is in flight
    follower = asyncio.ensure_future(cache.blob(as_("Bearer good"), B_DIGEST, head=False))
    await asyncio.sleep(0.01)
    upstream.answer_gate.set()
    refused, served = await leader, await follower
    assert refused == Refused(401, 'Bearer realm="x"')
    assert isinstance(served, Filling)
    assert b"".join([c async for c in served.fill.stream(0, len(BLOB))]) == BLOB


async def test_manifest_404s_are_replayed_briefly_per_credential(tmp_path: Path) -> None:
    from appliance.cache.negative import NegativeCache

    files = FileBlobStore(tmp_path)
    files.prepare()
    index = await SqliteIndex.open(tmp_path / "index.sqlite")
    upstream = FakeUpstream()
    now = [0.0]
    cache = RegistryCache(
        files,
        index,
        upstream,
        AccessGate(upstream),
        NegativeCache(30, clock=lambda: now[0]),  # type: ignore[arg-type]
    )
    sig = "sha256-" + "a" * 64 + ".sig"
    for _ in range(3):
        answer = await cache.manifest(target(), sig, head=False)
        assert answer == Refused(404)
    assert len(upstream.calls) == 2  # one HEAD and one GET, then replays
    other = Target(ORIGIN, "library/alpine", {"Authorization": "Bearer other"}, frozenset())
    await cache.manifest(other, sig, head=False)
    assert len(upstream.calls) == 4  # another credential asks for itself
    now[0] += 31
    await cache.manifest(target(), sig, head=False)
    assert len(upstream.calls) == 6
    await index.close()


async def test_fills_beyond_the_bound_are_refused_not_queued(tmp_path: Path) -> None:
    from appliance.cache.fill import TooManyFills

    files = FileBlobStore(tmp_path)
    files.prepare()
    index = await SqliteIndex.open(tmp_path / "index.sqlite")
    upstream = FakeUpstream()
    cache = RegistryCache(files, index, upstream, AccessGate(upstream), max_fills=1)  # type: ignore[arg-type]
    other = Digest.of(b"other")
    first = upstream.add("GET", f"{ORIGIN}/v2/library/alpine/blobs/{B_DIGEST}", 200, BLOB,
                         Content_Length=str(len(BLOB)))  # fmt: skip
    first.gate = asyncio.Event()
    upstream.add("GET", f"{ORIGIN}/v2/library/alpine/blobs/{other}", 200, b"other")
    running = await cache.blob(target(), B_DIGEST, head=False)
    assert isinstance(running, Filling)
    with pytest.raises(TooManyFills):
        await cache.blob(target(), other, head=False)
    first.gate.set()
    _ = [c async for c in running.fill.stream(0, len(BLOB))]
    await index.close()


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
