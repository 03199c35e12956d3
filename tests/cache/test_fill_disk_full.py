"""A fill whose disk fills mid-transfer: its readers still get every byte (streamed
through), nothing is kept, the temp file goes. The tmpfs end-to-end test does this with a
real full filesystem; here the failure is placed at an exact byte."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from multidict import CIMultiDict

from appliance.cache.fill import _HOLD_STEP, Fill, FillState, NotKept
from appliance.cache.fills import Fills
from appliance.config.model import Size, StoreConfig
from appliance.oci.digest import Digest
from appliance.store.eviction import Evictor
from appliance.store.files import FileBlobStore, TempBlob
from appliance.store.index import SqliteIndex

CHUNK = 64 << 10
BODY = os.urandom(40 * CHUNK + 123)


class ChunkedReply:
    status = 200
    digest = None
    content_type = ""

    def __init__(self, body: bytes, *, known: bool = True) -> None:
        """`known`: upstream says how long the body is."""
        self.headers = CIMultiDict({"Content-Length": str(len(body))} if known else {})
        self.length = len(body) if known else None
        self._body = body
        self.closed = False

    async def chunks(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self._body), CHUNK):
            await asyncio.sleep(0)
            yield self._body[start : start + CHUNK]

    async def read(self, limit: int) -> bytes:
        return self._body[:limit]

    def close(self) -> None:
        self.closed = True


class SmallDisk(FileBlobStore):
    """Writes fail with ENOSPC once a temp file would pass `room` bytes."""

    def __init__(self, root: Path, room: int) -> None:
        super().__init__(root)
        self.room = room

    def create_temp(self) -> TempBlob:
        temp = super().create_temp()
        room = self.room

        class Full(TempBlob):
            def write(self, chunk: bytes) -> None:
                if self.written + len(chunk) > room:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                super().write(chunk)

        return Full(temp.path, temp.fd)


async def _read(fill: Fill) -> bytes:
    return b"".join([bytes(c) async for c in fill.stream(0, 1 << 62)])


@pytest.mark.parametrize("known", [True, False], ids=["length-known", "length-unknown"])
async def test_readers_get_every_byte_when_the_disk_fills_mid_fill(
    tmp_path: Path, known: bool
) -> None:
    files = SmallDisk(tmp_path, room=10 * CHUNK)
    files.prepare()
    committed: list[Fill] = []
    full: list[OSError] = []

    async def on_commit(fill: Fill) -> None:
        committed.append(fill)

    fills = Fills(files, on_commit, on_disk_full=lambda _f, e: full.append(e))
    digest = Digest.of(BODY)
    reply = ChunkedReply(BODY, known=known)  # unknown: each chunk's last byte held back

    async def fetch() -> ChunkedReply:
        return reply

    leader = await fills.join_or_start(digest, fetch, None)
    assert isinstance(leader, Fill)
    follower = await fills.join_or_start(digest, fetch, None)
    assert follower is leader
    got = await asyncio.gather(_read(leader), _read(leader))
    assert got == [BODY, BODY]
    await asyncio.sleep(0.05)
    assert leader.state is FillState.PASSED and leader.on_disk == 10 * CHUNK
    assert committed == [] and len(full) == 1 and reply.closed
    assert list((tmp_path / "tmp").iterdir()) == [] and files.size_of(digest) is None
    # A request after that does not join the pass-through: it starts a fill of its own.
    assert fills.active(digest) is None


async def test_a_pass_through_with_nobody_reading_stops(tmp_path: Path) -> None:
    files = SmallDisk(tmp_path, room=0)
    files.prepare()

    async def on_commit(_fill: Fill) -> None:
        raise AssertionError("nothing may be committed")

    fills = Fills(files, on_commit)
    reply = ChunkedReply(BODY)

    async def fetch() -> ChunkedReply:
        return reply

    fill = await fills.join_or_start(Digest.of(BODY), fetch, None)
    assert isinstance(fill, Fill)
    stream = fill.stream(0, 1 << 62)
    first = await anext(stream)
    assert first == BODY[:CHUNK]
    await stream.aclose()  # the only client went away
    for _ in range(100):
        if fill.state is FillState.FAILED:
            break
        await asyncio.sleep(0.01)
    assert fill.state is FillState.FAILED
    full = "the store's disk is full (No space left on device)"
    left = "and no client is left to stream it to"
    assert str(fill.error) == f"{fill.digest} is not kept: {full}, {left}"
    assert reply.closed and list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.parametrize("known", [True, False], ids=["length-known", "length-unknown"])
async def test_a_fill_that_stops_writing_gives_back_the_room_it_will_not_use(
    tmp_path: Path, known: bool
) -> None:
    """Held room is room eviction makes and other fills wait for: once the disk has
    filled, the rest of the body will not be written, however slowly it is read."""
    files = SmallDisk(tmp_path, room=4 * CHUNK)
    files.prepare()
    index = await SqliteIndex.open(tmp_path / "index.sqlite")
    held = len(BODY) if known else _HOLD_STEP  # what the fill holds before it writes
    limits = StoreConfig(max_size=Size(held + len(BODY) // 2), min_free=Size(0))
    evictor = Evictor(index, files, limits)

    async def on_commit(_fill: Fill) -> None:
        raise AssertionError("nothing may be committed")

    fills = Fills(files, on_commit, space=evictor)
    reply = ChunkedReply(BODY, known=known)

    async def fetch() -> ChunkedReply:
        return reply

    try:
        async with asyncio.timeout(10):  # a safety net
            fill = await fills.join_or_start(Digest.of(BODY), fetch, None)
            assert isinstance(fill, Fill)
            stream = fill.stream(0, 1 << 62)
            got = bytearray()
            while not fill.passing:
                got += await anext(stream)
            # The one reader pauses: the fill waits for it, and holds just what is on disk.
            assert not fill.ended and evictor.held == fill.on_disk == 4 * CHUNK
            assert await evictor.hold(len(BODY))  # another fill gets the room at once
            evictor.release(len(BODY))
            got += b"".join([bytes(c) async for c in stream])
            while not fill.ended:
                await asyncio.sleep(0.01)
    finally:
        await index.close()
    assert got == BODY and fill.state is FillState.PASSED and evictor.held == 0


async def test_a_range_waiting_for_the_stored_copy_is_told_at_once_that_it_is_not_kept(
    tmp_path: Path,
) -> None:
    """An answer waiting for the verified, stored copy (a range short of the end) is not
    a reader of the pass-through: it hears so as the fill stops writing, while a reader
    of the whole body still gets every byte."""
    files = SmallDisk(tmp_path, room=10 * CHUNK)
    files.prepare()

    async def on_commit(_fill: Fill) -> None:
        raise AssertionError("nothing may be committed")

    fills = Fills(files, on_commit)
    reply = ChunkedReply(BODY)

    async def fetch() -> ChunkedReply:
        return reply

    fill = await fills.join_or_start(Digest.of(BODY), fetch, None)
    assert isinstance(fill, Fill)
    waiting = asyncio.ensure_future(fill.wait_stored())
    stream = fill.stream(0, 1 << 62)
    got = bytearray()
    async with asyncio.timeout(10):  # a safety net
        while not fill.passing:
            got += await anext(stream)
        # The reader pauses, so the fill cannot end; the waiting answer is told anyway.
        await asyncio.wait([waiting], timeout=5)
        assert waiting.done() and not fill.ended
        with pytest.raises(NotKept, match="is not kept: the store's disk is full"):
            waiting.result()
        got += b"".join([bytes(c) async for c in stream])
        while not fill.ended:
            await asyncio.sleep(0.01)
    assert got == BODY and fill.state is FillState.PASSED
