"""The fills in flight: one upstream fetch per digest, joined by every request meanwhile,
bounded; against a real store and index with the upstream port faked."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from multidict import CIMultiDict

from appliance.cache.access import AccessGate
from appliance.cache.answers import Filling, Refused, Stored, Target
from appliance.cache.fill import Fill, FillState
from appliance.cache.fills import Fills
from appliance.cache.service import RegistryCache
from appliance.oci.digest import Digest
from appliance.store.files import FileBlobStore
from appliance.store.index import SqliteIndex
from tests.cache.alpine import B_DIGEST, BLOB, ORIGIN, target
from tests.cache.fakes import FakeReply, FakeUpstream


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


async def test_a_fill_stays_busy_for_eviction_until_its_row_is_written(tmp_path: Path) -> None:
    files = FileBlobStore(tmp_path)
    files.prepare()
    indexing = asyncio.Event()
    indexed = asyncio.Event()

    async def on_commit(_fill: Fill) -> None:
        indexing.set()
        await indexed.wait()  # the index write, slow

    fills = Fills(files, on_commit)

    async def fetch() -> FakeReply:
        return FakeReply(200, CIMultiDict({"Content-Length": str(len(BLOB))}), BLOB)

    fill = await fills.join_or_start(B_DIGEST, fetch, None)
    assert isinstance(fill, Fill) and fills.running() == {str(B_DIGEST)}
    async with asyncio.timeout(5):
        await indexing.wait()
    # The file is in place, its row not yet: eviction must not choose the digest (the
    # files it removes after deleting rows could be this new one).
    assert files.size_of(B_DIGEST) == len(BLOB)
    assert fills.running() == {str(B_DIGEST)}
    indexed.set()
    async with asyncio.timeout(5):
        await fill.wait_stored()
    assert fills.running() == set() and fills.active(B_DIGEST) is not None  # still joinable
