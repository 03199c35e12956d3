"""The store reconciled in the background at start-up, on a real store: ready at once when
quick, else progress in the log, readiness and systemd's STATUS=, and eviction only after."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.oci.digest import Digest
from appliance.runtime.startup import StoreStartup
from appliance.store.files import FileBlobStore
from appliance.store.index import SqliteIndex
from appliance.store.reconcile import INDEX_NAME
from tests.harness import notify_socket, received
from tests.store.stock import Walk, unindexed


@dataclass
class Parts:
    files: FileBlobStore
    index: SqliteIndex


@pytest.fixture
async def lost_index(tmp_path: Path) -> AsyncIterator[Parts]:
    """Five blob files and an index that lost their rows."""
    files = FileBlobStore(tmp_path)
    files.prepare()
    for i in range(5):
        unindexed(files, f"blob {i}".encode() * 1000)
    index = await SqliteIndex.open(tmp_path / INDEX_NAME)
    yield Parts(files, index)
    await index.close()


@pytest.fixture
def systemd(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    with notify_socket(monkeypatch) as sock:
        yield sock


async def forever() -> None:
    await asyncio.Event().wait()


async def test_a_store_quick_to_reconcile_is_ready_before_the_listeners_open(
    lost_index: Parts,
) -> None:
    startup = StoreStartup(lost_index.index, lost_index.files)
    assert not startup.ready and startup.problem() is not None
    startup.start()
    await startup.head_start(30)  # a safety net: five small files take milliseconds
    assert startup.ready and startup.problem() is None and startup.status() == "serving"
    assert len(await lost_index.index.sizes()) == 5
    await startup.stop()


async def test_a_long_reconciliation_reports_progress_and_eviction_waits_for_its_end(
    lost_index: Parts,
    systemd: socket.socket,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="appliance.runtime.startup")
    walk = Walk(lost_index.files, monkeypatch)
    startup = StoreStartup(lost_index.index, lost_index.files, report_every_s=0.05)
    evicting: list[bool] = []

    async def eviction() -> None:
        evicting.append(startup.ready)
        await forever()

    startup.start()
    await walk.held()
    await startup.head_start(0)
    assert not startup.ready
    problem = startup.problem()
    assert problem is not None and "store: reconciling checked=0 of=5 bytes=0 " in problem
    job = asyncio.create_task(startup.run(eviction))
    started = time.monotonic()
    try:
        for _ in range(2):  # progress reaches systemd while the walk is held
            assert (await received(systemd)).startswith(
                "STATUS=reconciling the store, passing through uncached: checked=0 of=5"
            )
        assert evicting == []  # nothing is evicted from an index still being rebuilt
        walk.go_on.set()
        while (status := await received(systemd)) != "STATUS=serving":
            assert status.startswith("STATUS=reconciling"), status
        assert evicting == [True]
        took = time.monotonic() - started
    finally:
        walk.go_on.set()
        job.cancel()
        await asyncio.gather(job, return_exceptions=True)
    lines = [r.getMessage() for r in caplog.records if "reconcile progress" in r.getMessage()]
    assert lines and all(line.startswith("store reconcile progress checked=") for line in lines)
    assert " rate=" in lines[0] and " bytes=" in lines[0]
    assert len(lines) <= took / 0.05 + 1  # at most one per interval
    assert "cache ready files=5 reindexed=5" in caplog.text
    assert startup.ready and startup.problem() is None
    assert len(await lost_index.index.sizes()) == 5


async def test_a_file_that_cannot_be_read_does_not_stop_start_up(
    lost_index: Parts, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Bit rot under one file (EIO) is skipped and left for the next start: it used to
    fail reconciliation, and with it regcache, again at every restart."""
    caplog.set_level(logging.INFO)
    real = lost_index.files.hashes_to_name
    bad = next(p for p, _ in lost_index.files.walk())

    def hashes_to_name(path: Path, digest: Digest) -> bool:
        if path == bad:
            raise OSError(errno.EIO, "Input/output error")
        return real(path, digest)

    monkeypatch.setattr(lost_index.files, "hashes_to_name", hashes_to_name)
    startup = StoreStartup(lost_index.index, lost_index.files)
    startup.start()
    await startup.head_start(30)  # a safety net: five small files take milliseconds
    assert startup.ready and startup.problem() is None
    assert len(await lost_index.index.sizes()) == 4
    assert f"store reconcile-skipped path={bad} errno=EIO doing=hash" in caplog.text
    assert "cache ready files=5 reindexed=4 skipped=1 " in caplog.text
    await startup.stop()


async def test_stopping_midway_leaves_a_store_the_next_start_finishes(
    lost_index: Parts, monkeypatch: pytest.MonkeyPatch
) -> None:
    walk = Walk(lost_index.files, monkeypatch)
    startup = StoreStartup(lost_index.index, lost_index.files)
    startup.start()
    await walk.held()
    try:
        await startup.stop()
    finally:
        walk.go_on.set()
    assert not startup.ready
    again = StoreStartup(lost_index.index, lost_index.files)
    again.start()
    await again.head_start(30)
    assert again.ready and len(await lost_index.index.sizes()) == 5
