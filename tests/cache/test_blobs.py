"""Blob answers against a real store and index, with the upstream port faked: from the
store when whole there, described from a fill that knows its size."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.cache.access import AccessGate
from appliance.cache.answers import Described, Filling, Stored
from appliance.cache.fill import FillState
from appliance.cache.service import RegistryCache
from appliance.oci.mediatypes import OCTET_STREAM
from appliance.store.files import FileBlobStore
from appliance.store.index import SqliteIndex
from tests.cache.alpine import B_DIGEST, BLOB, ORIGIN, target
from tests.cache.fakes import FakeUpstream

URL = f"{ORIGIN}/v2/library/alpine/blobs/{B_DIGEST}"


@dataclass
class Lab:
    cache: RegistryCache
    upstream: FakeUpstream
    index: SqliteIndex


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    files = FileBlobStore(tmp_path)
    files.prepare()
    index = await SqliteIndex.open(tmp_path / "index.sqlite")
    upstream = FakeUpstream()
    cache = RegistryCache(files, index, upstream, AccessGate(upstream))  # type: ignore[arg-type]
    yield Lab(cache, upstream, index)
    await index.close()
    await index.close()


async def test_a_stored_blob_is_answered_for_get_and_head_without_upstream_and_counted(
    lab: Lab,
) -> None:
    lab.upstream.add("GET", URL, 200, BLOB, Content_Length=str(len(BLOB)))
    filling = await lab.cache.blob(target(), B_DIGEST, head=False)
    assert isinstance(filling, Filling)
    assert b"".join([c async for c in filling.fill.stream(0, len(BLOB))]) == BLOB
    for _ in range(200):  # the commit (fsync, rename, index row) follows the last byte
        if filling.fill.state is FillState.DONE:
            break
        await asyncio.sleep(0.01)
    calls = len(lab.upstream.calls)
    for head in (False, True):
        answer = await lab.cache.blob(target(), B_DIGEST, head=head)
        assert isinstance(answer, Stored)
        assert (answer.size, answer.media_type) == (len(BLOB), OCTET_STREAM)
        assert answer.path.read_bytes() == BLOB
    assert len(lab.upstream.calls) == calls  # the fetching client is vouched for
    assert await lab.index.hits(B_DIGEST) == 2


async def test_a_head_during_a_fill_is_described_from_the_fill_not_relayed(lab: Lab) -> None:
    reply = lab.upstream.add("GET", URL, 200, BLOB, Content_Length=str(len(BLOB)))
    reply.gate = asyncio.Event()
    lab.upstream.add("HEAD", URL, 200, Docker_Content_Digest=str(B_DIGEST),
                       Content_Length=str(len(BLOB)))  # fmt: skip
    filling = await lab.cache.blob(target(), B_DIGEST, head=False)
    assert isinstance(filling, Filling) and filling.fill.state is FillState.FILLING
    described = await lab.cache.blob(target(), B_DIGEST, head=True)
    assert described == Described(B_DIGEST, len(BLOB), OCTET_STREAM)
    assert lab.upstream.count("GET") == 1
    reply.gate.set()
    assert b"".join([c async for c in filling.fill.stream(0, len(BLOB))]) == BLOB
