"""Fills count against the store's bound: during a burst of pulls of distinct blobs the
files on disk (`blobs/` and `tmp/`) never pass `max_size` by more than one fill, every
client gets every byte, and what is kept is indexed. A real cache, store, index and
evictor; upstream faked, its bodies paced so that the fills overlap."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from appliance.cache import fill
from appliance.cache.access import AccessGate
from appliance.cache.answers import Filling
from appliance.cache.fill import Fill, FillState
from appliance.cache.service import RegistryCache
from appliance.config.model import Size, StoreConfig
from appliance.kit.logthrottle import LogThrottle
from appliance.oci.digest import Digest
from appliance.store.eviction import Evictor
from appliance.store.files import FileBlobStore
from appliance.store.index import SqliteIndex
from tests.cache.alpine import ORIGIN, target
from tests.cache.fakes import FakeReply, FakeUpstream

KiB = 1 << 10
MAX = 1024 * KiB
BLOB_BYTES = 128 * KiB
PIECE = 16 * KiB


class PacedReply(FakeReply):
    async def chunks(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.body), PIECE):
            await asyncio.sleep(0.002)
            yield self.body[start : start + PIECE]


class PacedUpstream(FakeUpstream):
    async def fetch(self, method: str, url: str, headers: Mapping[str, str]) -> FakeReply:
        reply = await super().fetch(method, url, headers)
        return PacedReply(reply.status, reply.headers, reply.body)


def on_disk(root: Path) -> int:
    """Bytes of the files under `blobs/` and `tmp/` now."""
    total = 0
    for folder in (root / "blobs", root / "tmp"):
        for parent, _dirs, names in os.walk(folder):
            for name in names:
                try:
                    total += os.stat(os.path.join(parent, name)).st_size
                except FileNotFoundError:
                    continue  # removed while listed
    return total


async def test_a_burst_of_fills_keeps_the_store_within_its_bound(tmp_path: Path) -> None:
    files = FileBlobStore(tmp_path)
    files.prepare()
    index = await SqliteIndex.open(tmp_path / "index.sqlite")
    limits = StoreConfig(max_size=Size(MAX), high_watermark_pct=90, low_watermark_pct=50,
                         min_free=Size(0), check_interval_s=1)  # fmt: skip
    evictor = Evictor(index, files, limits)
    upstream = PacedUpstream()
    cache = RegistryCache(files, index, upstream, AccessGate(upstream), space=evictor)  # type: ignore[arg-type]
    evictor.busy = cache.filling
    bodies = [os.urandom(BLOB_BYTES) for _ in range(24)]
    for body in bodies:
        upstream.add("GET", f"{ORIGIN}/v2/library/alpine/blobs/{Digest.of(body)}", 200, body,
                     Content_Length=str(len(body)))  # fmt: skip
    peak = 0
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, on_disk(tmp_path))
            await asyncio.sleep(0.001)

    async def pull(body: bytes) -> Fill:
        answer = await cache.blob(target(), Digest.of(body), head=False)
        assert isinstance(answer, Filling)
        got = b"".join([bytes(c) async for c in answer.fill.stream(0, len(body))])
        assert got == body  # kept or streamed through: every byte, the right ones
        return answer.fill

    evicting = asyncio.create_task(evictor.run())
    sampling = asyncio.create_task(sample())
    try:
        async with asyncio.timeout(30):  # a safety net
            fills = await asyncio.gather(*(pull(b) for b in bodies))
            while not all(f.ended for f in fills):  # the last commits
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
        kept = [f.digest for f in fills if f.state is FillState.DONE]
        rows = {str(d) for d in kept if await index.blob(d) is not None}
        total = await index.total_size()
    finally:
        done.set()
        await sampling
        evicting.cancel()
        await asyncio.gather(evicting, return_exceptions=True)
        await index.close()
    assert peak <= MAX + BLOB_BYTES, f"{peak} bytes on disk, bound {MAX} + one fill"
    # Fills that found no room in time streamed through; the rest were kept, and what
    # is on disk now is what the index holds, within the bound.
    assert {f.state for f in fills} <= {FillState.DONE, FillState.PASSED}
    assert len(kept) > len(bodies) // 2, [f.state for f in fills]
    assert total <= MAX and list((tmp_path / "tmp").iterdir()) == []
    assert {str(d) for _, d in files.walk()} == rows and on_disk(tmp_path) == total


async def test_a_fill_that_finds_no_room_streams_through_uncached(
    tmp_path: Path, caplog, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    # The line is throttled per process: another test may just have logged it.
    monkeypatch.setattr(fill, "_bound_log", LogThrottle(fill.log, interval_s=60.0))
    files = FileBlobStore(tmp_path)
    files.prepare()
    index = await SqliteIndex.open(tmp_path / "index.sqlite")
    limits = StoreConfig(max_size=Size(MAX), min_free=Size(0))
    evictor = Evictor(index, files, limits)
    upstream = PacedUpstream()
    cache = RegistryCache(files, index, upstream, AccessGate(upstream), space=evictor)  # type: ignore[arg-type]
    body = os.urandom(MAX + PIECE)  # more than the whole bound
    digest = Digest.of(body)
    upstream.add("GET", f"{ORIGIN}/v2/library/alpine/blobs/{digest}", 200, body,
                 Content_Length=str(len(body)))  # fmt: skip
    try:
        async with asyncio.timeout(10):  # a safety net
            answer = await cache.blob(target(), digest, head=False)
            assert isinstance(answer, Filling)
            got = b"".join([bytes(c) async for c in answer.fill.stream(0, len(body))])
            while not answer.fill.ended:
                await asyncio.sleep(0.01)
        assert got == body and answer.fill.state is FillState.PASSED
        assert await index.blob(digest) is None and evictor.held == 0
    finally:
        await index.close()
    assert list((tmp_path / "tmp").iterdir()) == [] and files.size_of(digest) is None
    assert any("store over-bound" in r.getMessage() for r in caplog.records)
