"""The store reconciled in the background at start-up, on a real store: ready at once when
quick, else progress in the log, readiness and systemd's STATUS=, and eviction only after."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


class FullIndex:
    """The index refuses writes while `full` (SQLite on a full disk), then heals."""

    def __init__(self, index: SqliteIndex, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full = True
        real = index.restore

        async def restore(*args: Any) -> bool:
            if self.full:
                raise sqlite3.OperationalError("database or disk is full")
            return await real(*args)

        monkeypatch.setattr(index, "restore", restore)


def failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.ERROR and r.getMessage().startswith("store reconcile-failed ")
    ]


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait for `condition` (a safety net of 30 s, polled)."""
    try:
        async with asyncio.timeout(30):
            while not condition():
                await asyncio.sleep(0.01)
    except TimeoutError:
        pytest.fail(f"never came: {what}")


async def test_a_failed_reconciliation_leaves_regcache_serving_uncached_and_is_retried(
    lost_index: Parts, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A reconciliation that fails as a whole used to end the supervised job, so regcache
    exited 1 at every start until systemd gave up: no DNS for the build network."""
    caplog.set_level(logging.INFO, logger="appliance.runtime.startup")
    index = FullIndex(lost_index.index, monkeypatch)
    startup = StoreStartup(
        lost_index.index, lost_index.files, report_every_s=0.05, retry_s=0.05, max_retry_s=0.1
    )
    evicting: list[bool] = []

    async def eviction() -> None:
        evicting.append(startup.ready)
        await forever()

    startup.start()
    job = None
    try:
        await until(lambda: len(failures(caplog)) >= 1, "a first failure")
        await startup.head_start(0)  # the listeners open all the same
        assert not startup.ready
        job = asyncio.create_task(startup.run(eviction))
        await until(lambda: len(failures(caplog)) >= 4, "failures retried")
        assert not job.done() and not startup.ready and evicting == []
        problem = startup.problem()
        assert problem is not None and problem.startswith("store: reconcile")
        assert "OperationalError: database or disk is full" in problem
        assert problem.endswith("manifests and blobs pass through uncached")
        index.full = False  # room again: the next attempt reconciles
        await until(lambda: evicting == [True], "eviction started once ready")
        assert not job.done()
    finally:
        if job is not None:
            job.cancel()
            await asyncio.gather(job, return_exceptions=True)
        await startup.stop()
    lines = failures(caplog)
    assert 'error="OperationalError: database or disk is full"' in lines[0]
    assert [line.split(" retry_in_s=")[1].split()[0] for line in lines[:4]] == [
        "0.05", "0.1", "0.1", "0.1",
    ]  # fmt: skip
    assert startup.ready and startup.problem() is None and startup.status() == "serving"
    assert len(await lost_index.index.sizes()) == 5


async def test_a_stop_ends_a_reconciliation_waiting_to_be_retried(
    lost_index: Parts, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="appliance.runtime.startup")
    FullIndex(lost_index.index, monkeypatch)
    startup = StoreStartup(lost_index.index, lost_index.files, retry_s=0.05, max_retry_s=0.05)
    startup.start()
    try:
        await until(lambda: len(failures(caplog)) >= 2, "failures retried")
    finally:
        async with asyncio.timeout(30):
            await startup.stop()  # regcache stopping
    tried = len(failures(caplog))
    await asyncio.sleep(0.2)  # four retry intervals: none comes
    assert len(failures(caplog)) == tried and not startup.ready


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
