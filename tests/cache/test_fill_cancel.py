"""A fill cancelled (at shutdown) while a worker thread writes or fsyncs its temp file:
the file is closed only once the thread is done with it. Closed under it, its number
may already be another file's or a client's socket when the thread writes. The thread
is held at an exact point, so the order is certain."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest
from multidict import CIMultiDict

from appliance.cache.fill import Fill, FillState
from appliance.oci.digest import Digest
from appliance.store.files import FileBlobStore, TempBlob
from tests.cache.fakes import FakeReply

BODY = os.urandom(512 << 10)  # two halves, each past the size written on the loop itself


class Watched(FileBlobStore):
    """Temp files that say when they are written, synced and closed; a write or an
    fsync of one waits for `go` (in its worker thread) when `hold` names it."""

    def __init__(self, root: Path, hold: str) -> None:
        super().__init__(root)
        self.events: list[str] = []
        self.held, self.go = threading.Event(), threading.Event()
        self.hold = hold

    def create_temp(self) -> TempBlob:
        temp = super().create_temp()
        store = self

        class Temp(TempBlob):
            def write(self, chunk: bytes) -> None:
                store.wait("write")
                try:
                    super().write(chunk)
                except OSError as e:
                    store.events.append(f"write failed: {e.strerror}")
                    raise
                store.events.append("written")

            def close(self) -> None:
                if not self.closed:
                    store.events.append("closed")
                super().close()

        return Temp(temp.path, temp.fd)

    def wait(self, what: str) -> None:
        if what == self.hold and not self.held.is_set():
            self.held.set()
            self.go.wait(10)  # a safety net


@pytest.mark.parametrize("hold", ["write", "fsync"])
async def test_a_fill_cancelled_mid_write_closes_its_file_only_after_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, hold: str, caplog: pytest.LogCaptureFixture
) -> None:
    files = Watched(tmp_path, hold)
    files.prepare()
    temp = files.create_temp()
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        if fd == temp.fd and not temp.closed:  # not a later open given its number
            files.wait("fsync")
            real_fsync(fd)
            files.events.append("synced")
        else:
            real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)

    async def on_commit(_fill: Fill) -> None:
        raise AssertionError("a cancelled fill is not indexed")

    fill = Fill(Digest.of(BODY), len(BODY), None, temp)
    reply = FakeReply(200, CIMultiDict({"Content-Length": str(len(BODY))}), BODY)
    task = asyncio.create_task(fill.run(reply, files, on_commit))
    try:
        assert await asyncio.to_thread(files.held.wait, 10)  # the thread is at `hold`
        task.cancel()  # shutdown
        await asyncio.wait([task], timeout=0.5)  # the loop runs on meanwhile
        files.events.append("go")
    finally:
        files.go.set()
    async with asyncio.timeout(10):  # a safety net
        with pytest.raises(asyncio.CancelledError):
            await task
    done = "written" if hold == "write" else "synced"
    assert files.events[-3:] == ["go", done, "closed"], files.events
    assert fill.state is FillState.FAILED and list((tmp_path / "tmp").iterdir()) == []
    assert f"fill failed digest={fill.digest}" in caplog.text  # and why, though the
    assert "error=CancelledError" in caplog.text  # cancellation carries no message
    if hold == "fsync":  # renamed into place before the cancellation went on: whole, and
        # unindexed (reconciliation indexes it at the next start)
        assert files.path_for(fill.digest).read_bytes() == BODY
