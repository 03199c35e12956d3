"""A fill whose body checked out but could not be stored (fsync or rename failed: EIO,
ENOSPC): it fails once and for all, its temp file closed once and removed, and whoever
reads it hears so at once; against a real store and index with the upstream port faked."""

from __future__ import annotations

import asyncio
import errno
import os
import stat
from pathlib import Path

import pytest

from appliance.cache.answers import Filling
from appliance.cache.fill import FillFailed, FillState
from appliance.store.index import SqliteIndex
from appliance.store.maintenance import verify
from tests.cache.alpine import B_DIGEST, BLOB, ORIGIN, target
from tests.store.test_files import taken_by_a_socket


def _temp_fd(tmp: Path) -> int:
    """The one descriptor this process has open on a file in `tmp` (the fill's)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}").startswith(str(tmp)):
                found.append(int(fd))
        except FileNotFoundError:  # the listing's own descriptor
            continue
    (number,) = found
    return number


@pytest.mark.parametrize("failing", ["fsync", "replace"])
@pytest.mark.parametrize("reused", [True, False], ids=["number-reused", "number-free"])
async def test_a_failed_commit_fails_the_fill_and_leaves_nothing(  # type: ignore[no-untyped-def]
    parts, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog, failing: str, reused: bool
) -> None:
    cache, upstream, files = parts
    reply = upstream.add("GET", f"{ORIGIN}/v2/library/alpine/blobs/{B_DIGEST}", 200, BLOB,
                         Content_Length=str(len(BLOB)))  # fmt: skip
    reply.gate = asyncio.Event()
    answer = await cache.blob(target(), B_DIGEST, head=False)
    assert isinstance(answer, Filling)
    fill = answer.fill
    await asyncio.sleep(0.01)  # the fill has its temp file open
    number = _temp_fd(tmp_path / "tmp")
    real_close, real_call = os.close, getattr(os, failing)
    sockets: list[object] = []

    def close(fd: int) -> None:
        real_close(fd)
        if fd == number and reused and not sockets:  # another open takes the number
            sockets.append(taken_by_a_socket(number))
            sockets[0].__enter__()  # type: ignore[attr-defined]

    def broken(*args: object) -> None:
        if failing == "replace" or args[0] == number:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_call(*args)

    monkeypatch.setattr(os, "close", close)
    monkeypatch.setattr(os, failing, broken)
    reader = fill.stream(0, len(BLOB))
    first = await anext(reader)  # a client part-way through when the commit fails
    reply.gate.set()
    try:
        async with asyncio.timeout(10):  # a safety net
            with pytest.raises(FillFailed):
                await fill.wait_stored()
        monkeypatch.undo()
        if reused:  # the socket that took the number is still open
            assert stat.S_ISSOCK(os.fstat(number).st_mode)
    finally:
        monkeypatch.undo()
        if sockets:
            sockets[0].__exit__(None, None, None)  # type: ignore[attr-defined]
    assert fill.state is FillState.FAILED
    assert "could not be stored" in str(fill.error) and "No space left" in str(fill.error)
    assert any("fill failed" in r.message and "could not be stored" in r.message
               for r in caplog.records)  # fmt: skip
    async with asyncio.timeout(5):  # the safety net: a joiner used to wait for the 120 s cut
        with pytest.raises(FillFailed, match="could not be stored"):
            _ = [c async for c in reader]
        with pytest.raises(FillFailed, match="could not be stored"):
            _ = [c async for c in fill.stream(0, len(BLOB))]
    assert first and len(first) < len(BLOB)
    assert list((tmp_path / "tmp").iterdir()) == []
    assert files.size_of(B_DIGEST) is None
    index = await SqliteIndex.open(tmp_path / "index.sqlite")
    try:
        report = await verify(index, files, None)
        assert (report.bad, report.missing) == ([], []) and await index.blob(B_DIGEST) is None
    finally:
        await index.close()
    # The failed fill is not joined: the next request fetches afresh, and keeps it.
    again = await cache.blob(target(), B_DIGEST, head=False)
    assert isinstance(again, Filling) and again.fill is not fill
    assert b"".join([c async for c in again.fill.stream(0, len(BLOB))]) == BLOB
    async with asyncio.timeout(10):
        await again.fill.wait_stored()
    assert files.path_for(B_DIGEST).read_bytes() == BLOB
