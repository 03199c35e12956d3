"""How the cache's answers go out: ranges (RFC 9110 14), HEAD headers, bodies from the
store, from a fill in progress and from upstream, and what each answer is counted as."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from multidict import CIMultiDict

from appliance.cache import fill as fill_module
from appliance.cache.access import AccessGate
from appliance.cache.answers import Described, Filling, Relayed, Stored
from appliance.cache.fill import Fill, FillState
from appliance.cache.service import RegistryCache
from appliance.config.model import Size, StoreConfig
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import OCI_MANIFEST, OCTET_STREAM
from appliance.proxy.app import create_app
from appliance.store.eviction import Evictor
from appliance.store.files import FileBlobStore
from appliance.store.index import SqliteIndex
from tests.cache.fakes import FakeReply, FakeUpstream
from tests.cache.test_fill_disk_full import SmallDisk
from tests.proxy.conftest import REGISTRY, Proxy, registry_error, site_for
from tests.proxy.fakes import FakeFill, FakePassThrough, stored

DATA = b"0123456789"
DIGEST = Digest.of(DATA)
BLOB = f"/v2/team/app/blobs/{DIGEST}"


@pytest.fixture
def blob(proxy: Proxy, tmp_path: Path) -> Stored:
    """DATA in the store: the cache answers every request with it."""
    answer = stored(tmp_path, DATA)
    proxy.cache.answers(answer)
    return answer


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [
        ("bytes=2-5", 2, 5),
        ("bytes=4-", 4, 9),  # open-ended
        ("bytes=8-100", 8, 9),  # past the end: cut at the end
        ("bytes=-3", 7, 9),  # suffix: the last three bytes
        ("bytes=-100", 0, 9),  # a suffix longer than the blob: all of it
        (" bytes=0-0 ", 0, 0),
    ],
)
async def test_a_satisfiable_range_gets_206_with_just_those_bytes(
    proxy: Proxy, blob: Stored, header: str, first: int, last: int
) -> None:
    response = await proxy.ask(BLOB, Range=header)
    assert response.status == 206
    assert response.headers["Content-Range"] == f"bytes {first}-{last}/{len(DATA)}"
    assert response.headers["Content-Length"] == str(last - first + 1)
    assert response.headers["Docker-Content-Digest"] == str(DIGEST)
    assert await response.read() == DATA[first : last + 1]


@pytest.mark.parametrize(
    "header",
    [
        "bytes=0-1,4-5",  # several ranges: registry clients never ask for them
        "bytes=5-2",  # last before first
        "bytes=10-",  # starts past the end
        "bytes=-0",  # an empty suffix
        "bytes=-",
        "items=0-1",  # not bytes
    ],
)
async def test_an_unsatisfiable_or_multiple_range_gets_416_range_invalid(
    proxy: Proxy, blob: Stored, header: str
) -> None:
    response = await proxy.ask(BLOB, Range=header)
    await registry_error(response, 416, "RANGE_INVALID")
    assert response.headers["Content-Range"] == "bytes */10"  # RFC 9110 15.5.17


async def test_a_request_without_range_gets_the_whole_blob_and_is_told_ranges_work(
    proxy: Proxy, blob: Stored
) -> None:
    response = await proxy.ask(BLOB)
    assert response.status == 200 and "Content-Range" not in response.headers
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["Content-Length"] == str(len(DATA))
    assert await response.read() == DATA


async def test_head_of_a_stored_blob_has_its_headers_and_no_body(
    proxy: Proxy, blob: Stored
) -> None:
    response = await proxy.ask(BLOB, method="HEAD")
    assert response.status == 200
    assert response.headers["Content-Length"] == str(len(DATA))
    assert response.headers["Docker-Content-Digest"] == str(DIGEST)
    assert response.headers["Content-Type"] == OCTET_STREAM
    assert response.headers["Accept-Ranges"] == "bytes"
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert await response.read() == b""
    assert proxy.cache.asked[0].head is True


async def test_head_with_a_range_gets_the_ranges_headers_and_no_body(
    proxy: Proxy, blob: Stored
) -> None:
    response = await proxy.ask(BLOB, method="HEAD", Range="bytes=-4")
    assert response.status == 206
    assert response.headers["Content-Range"] == f"bytes 6-9/{len(DATA)}"
    assert response.headers["Content-Length"] == "4"
    assert await response.read() == b""


async def test_head_answered_by_a_description_has_the_headers_of_the_body_it_would_send(
    proxy: Proxy,
) -> None:
    digest = Digest.of(b"{}")
    proxy.cache.answers(Described(digest, 1234, OCI_MANIFEST))
    response = await proxy.ask("/v2/team/app/manifests/v1", method="HEAD")
    assert response.status == 200
    assert response.headers["Content-Length"] == "1234"
    assert response.headers["Docker-Content-Digest"] == str(digest)
    assert response.headers["Content-Type"] == OCI_MANIFEST
    assert await response.read() == b""
    (asked,) = proxy.cache.asked
    assert (asked.what, asked.reference, asked.head) == ("manifest", "v1", True)


async def test_a_stored_manifest_goes_out_with_its_media_type_and_digest(
    proxy: Proxy, tmp_path: Path
) -> None:
    manifest = stored(tmp_path, b'{"schemaVersion": 2}', OCI_MANIFEST)
    proxy.cache.answers(manifest)
    response = await proxy.ask(f"/v2/team/app/manifests/{manifest.digest}")
    assert response.status == 200
    assert response.headers["Content-Type"] == OCI_MANIFEST
    assert response.headers["Docker-Content-Digest"] == str(manifest.digest)
    assert await response.read() == b'{"schemaVersion": 2}'
    (asked,) = proxy.cache.asked
    assert asked.what == "manifest" and asked.reference == manifest.digest


async def test_a_hit_known_in_memory_is_served_without_asking_the_cache(
    proxy: Proxy, tmp_path: Path
) -> None:
    proxy.cache.hit = stored(tmp_path, DATA)
    response = await proxy.ask(BLOB)
    assert response.status == 200 and await response.read() == DATA
    assert proxy.cache.asked == []
    assert proxy.cache.noted_hits == [proxy.cache.hit]


async def test_a_range_of_a_fill_is_answered_from_it_once_stored_unless_it_runs_to_the_end(
    proxy: Proxy,
) -> None:
    fill = FakeFill(DATA, size=len(DATA))
    proxy.cache.answers(Filling(DIGEST, OCTET_STREAM, fill))  # type: ignore[arg-type]
    response = await proxy.ask(BLOB, Range="bytes=3-6")
    assert response.status == 206 and fill.waited
    assert response.headers["Content-Range"] == f"bytes 3-6/{len(DATA)}"
    assert await response.read() == DATA[3:7]
    # To the last byte: streamed as it arrives, that byte held back until verified.
    for header, first in (("bytes=4-", 4), ("bytes=-3", 7), ("bytes=2-100", 2)):
        fill = FakeFill(DATA, size=len(DATA))
        proxy.cache.answers(Filling(DIGEST, OCTET_STREAM, fill))  # type: ignore[arg-type]
        response = await proxy.ask(BLOB, Range=header)
        assert response.status == 206 and not fill.waited, header
        assert await response.read() == DATA[first:]


async def test_a_fill_of_unknown_length_is_streamed_whole_but_refuses_ranges(
    proxy: Proxy,
) -> None:
    fill = FakeFill(DATA, size=None)
    proxy.cache.answers(Filling(DIGEST, OCTET_STREAM, fill))  # type: ignore[arg-type]
    whole = await proxy.ask(BLOB)
    assert whole.status == 200 and "Content-Length" not in whole.headers
    assert await whole.read() == DATA
    ranged = await proxy.ask(BLOB, Range="bytes=0-3")
    await registry_error(ranged, 416, "RANGE_INVALID")


async def test_a_relayed_answer_goes_out_as_upstream_sent_it(proxy: Proxy) -> None:
    reply = FakeReply(307, CIMultiDict({"Location": "https://cdn.example/x"}), b"moved")
    proxy.cache.answers(Relayed(reply))
    response = await proxy.client.get(BLOB, headers={"Host": REGISTRY}, allow_redirects=False)
    assert response.status == 307
    assert response.headers["Location"] == "https://cdn.example/x"
    assert await response.read() == b"moved"
    assert reply.closed
    assert proxy.audit[0]["outcome"] == "relayed" and proxy.audit[0]["digest"] is None


async def test_a_store_hit_is_counted_audited_and_timed_as_a_hit(
    proxy: Proxy, blob: Stored
) -> None:
    response = await proxy.ask(BLOB, Range="bytes=0-3")
    assert await response.read() == DATA[:4]
    assert proxy.cache.served == [(REGISTRY, 4, 0)]  # from the store, none from upstream
    (entry,) = proxy.audit
    assert {k: entry[k] for k in ("registry", "repository", "reference", "digest")} == {
        "registry": REGISTRY, "repository": "team/app", "reference": str(DIGEST),
        "digest": str(DIGEST),
    }  # fmt: skip
    assert (entry["kind"], entry["method"], entry["status"]) == ("blob", "GET", 206)
    assert (entry["bytes"], entry["outcome"]) == (4, "hit")
    sample = proxy.metrics.registry.get_sample_value
    assert sample("regcache_served_bytes_total", {"registry": REGISTRY, "source": "store"}) == 4
    answers = {"registry": REGISTRY, "kind": "blob", "outcome": "hit"}
    assert sample("regcache_cache_answers_total", answers) == 1
    assert sample("regcache_time_to_first_byte_seconds_count", {"outcome": "hit"}) == 1
    assert proxy.requests_counted(REGISTRY, "blob", "GET", 206) == 1


async def test_bytes_from_a_fill_are_counted_as_fetched(proxy: Proxy) -> None:
    fill = FakeFill(DATA, size=len(DATA))
    proxy.cache.answers(Filling(DIGEST, OCTET_STREAM, fill))  # type: ignore[arg-type]
    assert await (await proxy.ask(BLOB)).read() == DATA
    assert proxy.cache.served == [(REGISTRY, 0, len(DATA))]
    assert proxy.audit[0]["outcome"] == "miss"


@dataclass
class Real:
    """The proxy over a real cache (real fills, store and index), upstream faked."""

    client: TestClient[web.Request, web.Application]
    upstream: FakeUpstream
    cache: RegistryCache
    files: FileBlobStore
    index: SqliteIndex

    def url(self, digest: Digest) -> str:
        return f"https://{REGISTRY}/v2/team/app/blobs/{digest}"

    async def evict(self) -> int:
        """What eviction would remove now (all but fills in flight): rows removed."""
        limits = StoreConfig(max_size=Size(1 << 30), min_free=Size(0))
        evictor = Evictor(self.index, self.files, limits, busy=self.cache.filling)
        return (await evictor.evict(1 << 30, reason="test")).rows

    async def indexed(self, digest: Digest) -> None:
        """Until `digest`'s fill has committed and written its row."""
        while await self.index.blob(digest) is None:
            await asyncio.sleep(0.01)


Client = Callable[[Any], Awaitable[TestClient[web.Request, web.Application]]]


async def _real(
    aiohttp_client: Client, files: FileBlobStore, limits: StoreConfig | None = None
) -> Real:
    """`files` (prepared here) behind a real cache, its bound `limits` if given."""
    files.prepare()
    index = await SqliteIndex.open(files.root / "index.sqlite")
    upstream = FakeUpstream()
    space = None if limits is None else Evictor(index, files, limits)
    cache = RegistryCache(files, index, upstream, AccessGate(upstream), space=space)  # type: ignore[arg-type]
    client = await aiohttp_client(create_app(cache, FakePassThrough(), site_for))
    return Real(client, upstream, cache, files, index)


@pytest.fixture
async def cached(aiohttp_client: Client, tmp_path: Path) -> AsyncIterator[Real]:
    real = await _real(aiohttp_client, FileBlobStore(tmp_path / "store"))
    yield real
    await real.index.close()


@pytest.mark.parametrize("wrong", [True, False], ids=["wrong-body", "right-body"])
async def test_a_range_short_of_the_end_is_never_sent_from_an_unverified_fill(
    cached: Real, wrong: bool
) -> None:
    client, upstream = cached.client, cached.upstream
    body = bytes(range(256)) * 64
    digest = Digest.of(body)
    sent = bytearray(body)
    if wrong:
        sent[-1] ^= 1  # only the end is wrong: the first 100 bytes are upstream's as sent
    reply = upstream.add("GET", f"https://{REGISTRY}/v2/team/app/blobs/{digest}", 200,
                         bytes(sent), Content_Length=str(len(body)))  # fmt: skip
    reply.gate = asyncio.Event()  # the first half arrives, the rest waits
    headers = {"Host": REGISTRY, "Range": "bytes=0-99"}
    asking = asyncio.ensure_future(client.get(f"/v2/team/app/blobs/{digest}", headers=headers))
    await asyncio.sleep(0.1)
    early = asking.done()
    reply.gate.set()
    async with asyncio.timeout(10):
        response = await asking
        if wrong:
            message = await registry_error(response, 502, "UNKNOWN")
            assert "hashes to" in message
        else:
            assert response.status == 206
            assert response.headers["Content-Range"] == f"bytes 0-99/{len(body)}"
            assert await response.read() == body[:100]
    assert not early  # nothing was sent while the fill was unverified
    assert upstream.count("GET") == 1


async def test_a_manifest_fetched_for_this_answer_is_a_miss_though_sent_from_its_file(
    proxy: Proxy, tmp_path: Path
) -> None:
    body = b'{"schemaVersion": 2}'
    fetched = replace(stored(tmp_path, body, OCI_MANIFEST), fetched=True)
    proxy.cache.answers(fetched)
    response = await proxy.ask(f"/v2/team/app/manifests/{fetched.digest}")
    assert response.status == 200 and await response.read() == body
    assert proxy.cache.served == [(REGISTRY, 0, len(body))]
    assert proxy.audit[0]["outcome"] == "miss"
    sample = proxy.metrics.registry.get_sample_value
    answers = {"registry": REGISTRY, "kind": "manifest", "outcome": "miss"}
    assert sample("regcache_cache_answers_total", answers) == 1
    upstream = {"registry": REGISTRY, "source": "upstream"}
    assert sample("regcache_served_bytes_total", upstream) == len(body)


async def test_a_fill_whose_file_is_gone_when_opened_is_asked_for_again_before_any_byte(
    proxy: Proxy,
) -> None:
    gone = FakeFill(DATA, size=len(DATA), state=FillState.DONE, gone=True)
    fresh = FakeFill(DATA, size=len(DATA))
    proxy.cache.answers(
        Filling(DIGEST, OCTET_STREAM, gone),  # type: ignore[arg-type]
        Filling(DIGEST, OCTET_STREAM, fresh),  # type: ignore[arg-type]
    )
    response = await proxy.ask(BLOB)
    assert response.status == 200 and await response.read() == DATA  # not cut short
    assert len(proxy.cache.asked) == 2


BODY = bytes(range(256)) * 64


@pytest.mark.parametrize(
    ("header", "start", "stop"), [(None, 0, len(BODY)), ("bytes=0-99", 0, 100),
                                  ("bytes=100-", 100, len(BODY))],
)  # fmt: skip
async def test_a_blob_evicted_after_its_fill_committed_is_fetched_afresh_not_cut(
    cached: Real, header: str | None, start: int, stop: int
) -> None:
    """A finished fill stays joinable a while after its commit, but its file is in the
    store like any other and may be evicted: a request for it then is a fresh fill."""
    digest = Digest.of(BODY)
    cached.upstream.add("GET", cached.url(digest), 200, BODY, Content_Length=str(len(BODY)))
    path = f"/v2/team/app/blobs/{digest}"
    headers = {"Host": REGISTRY} | ({"Range": header} if header else {})
    async with asyncio.timeout(10):  # a safety net
        first = await cached.client.get(path, headers={"Host": REGISTRY})
        assert await first.read() == BODY
        await cached.indexed(digest)
        assert await cached.evict() == 1 and cached.files.size_of(digest) is None
        again = await cached.client.get(path, headers=headers)  # well within 10 s
        assert again.status == (200 if header is None else 206)
        assert await again.read() == BODY[start:stop]
        await cached.indexed(digest)
    assert cached.upstream.count("GET") == 2
    assert cached.files.path_for(digest).read_bytes() == BODY


async def test_a_range_whose_fill_is_evicted_before_it_is_sent_is_fetched_afresh(
    cached: Real, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A range short of the end waits for the fill to be stored; eviction may strike
    between that and the open: the client still gets its bytes, never a cut 206."""
    digest = Digest.of(BODY)
    reply = cached.upstream.add("GET", cached.url(digest), 200, BODY,
                                Content_Length=str(len(BODY)))  # fmt: skip
    reply.gate = asyncio.Event()
    waiting = Fill.wait_stored
    evicted: list[int] = []

    async def wait_stored_then_evicted(fill: Fill) -> None:
        await waiting(fill)
        if not evicted:  # once: the fresh fill's answer goes out
            evicted.append(await cached.evict())

    monkeypatch.setattr(Fill, "wait_stored", wait_stored_then_evicted)
    headers = {"Host": REGISTRY, "Range": "bytes=0-99"}
    async with asyncio.timeout(10):  # a safety net
        asking = asyncio.ensure_future(
            cached.client.get(f"/v2/team/app/blobs/{digest}", headers=headers)
        )
        await asyncio.sleep(0.05)
        reply.gate.set()
        response = await asking
        assert response.status == 206 and await response.read() == BODY[:100]
    assert evicted == [1] and cached.upstream.count("GET") == 2


@pytest.mark.parametrize("cause", ["bound", "disk-full"])
async def test_a_range_short_of_the_end_of_a_fill_not_kept_is_told_at_once_to_ask_again(
    aiohttp_client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cause: str
) -> None:
    """A pass-through keeps no stored copy for such a range to wait for: it gets a 503
    that says why as the fill stops writing (upstream's body still held back here), not
    a 502 blaming a full disk after the fill has given up waiting for a reader."""
    monkeypatch.setattr(fill_module, "_FIRST_READER_WAIT_S", 0.2)  # the fill's own end
    if cause == "bound":  # the body does not fit under the store's bound
        limits = StoreConfig(max_size=Size(len(BODY) // 2), min_free=Size(0))
        real = await _real(aiohttp_client, FileBlobStore(tmp_path), limits)
    else:
        real = await _real(aiohttp_client, SmallDisk(tmp_path, room=0))
    digest = Digest.of(BODY)
    reply = real.upstream.add("GET", real.url(digest), 200, BODY, Content_Length=str(len(BODY)))
    reply.gate = asyncio.Event()  # the first half arrives, the rest waits
    headers = {"Host": REGISTRY, "Range": "bytes=0-99"}
    try:
        async with asyncio.timeout(20):  # a safety net
            response = await real.client.get(f"/v2/team/app/blobs/{digest}", headers=headers)
            message = await registry_error(response, 503, "UNAVAILABLE")
    finally:
        reply.gate.set()
        async with asyncio.timeout(10):  # the fill gives up: nobody to stream to
            while real.cache.filling():
                await asyncio.sleep(0.01)
        await real.index.close()
    assert response.headers["Retry-After"] == "5"
    why = {"bound": "the store is at its bound, store.max_size",
           "disk-full": "the store's disk is full (No space left on device)"}  # fmt: skip
    assert message == f"{digest} is not kept: {why[cause]}"
    assert real.files.size_of(digest) is None
