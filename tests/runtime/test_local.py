"""The local registry's parts as regcache builds them from `local:`: nothing without
hosts; with them, a registry named after its first host over the open index and store,
its uploads bounded as configured, and the job that purges abandoned uploads and ends
every open one when it is stopped."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from appliance.cache.ports import Unbounded
from appliance.config.local import LocalConfig
from appliance.config.values import Duration
from appliance.local.ports import LocalError
from appliance.oci.digest import Digest
from appliance.runtime import local as runtime_local
from appliance.runtime.local import Local, build_local
from appliance.store.files import FileBlobStore
from appliance.store.index import SqliteIndex

HOSTS = ("registry.build.internal", "registry2.build.internal")


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[tuple[SqliteIndex, FileBlobStore]]:
    files = FileBlobStore(tmp_path)
    files.prepare()
    index = await SqliteIndex.open(tmp_path / "index.sqlite")
    yield index, files
    await index.close()


def built(store: tuple[SqliteIndex, FileBlobStore], **config: object) -> Local:
    index, files = store
    local = build_local(LocalConfig(hosts=HOSTS, **config), index, files, Unbounded())  # type: ignore[arg-type]
    assert local is not None
    return local


def temps(root: Path) -> list[Path]:
    return list((root / "tmp").iterdir())


async def chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_without_hosts_there_is_no_local_registry(
    store: tuple[SqliteIndex, FileBlobStore],
) -> None:
    index, files = store
    assert build_local(LocalConfig(), index, files, Unbounded()) is None


async def test_the_registry_goes_by_its_first_host_over_the_index_and_store(
    store: tuple[SqliteIndex, FileBlobStore],
) -> None:
    local = built(store, purge_uploads_after=Duration(7200.0))
    assert local.registry.name == HOSTS[0]
    assert local.registry.uploads.purge_after_s == 7200.0
    digest = Digest.of(b"pushed")
    assert (await local.registry.start_upload("app", digest, chunks(b"pushed"))).status == 201
    index, files = store
    assert await index.local_blob("app", digest) == 6 and files.size_of(digest) == 6
    assert not local.access.token_realm  # no htpasswd: nobody logs in


async def test_uploads_are_bounded_by_max_uploads(
    store: tuple[SqliteIndex, FileBlobStore],
) -> None:
    uploads = built(store, max_uploads=2).registry.uploads
    uploads.start("app")
    uploads.start("app")
    with pytest.raises(LocalError) as caught:
        uploads.start("app")
    assert caught.value.status == 429


async def test_the_purging_job_removes_abandoned_uploads(
    store: tuple[SqliteIndex, FileBlobStore], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime_local, "_PURGE_EVERY_S", 0.01)
    monkeypatch.setattr(runtime_local, "_TICK_S", 0.01)
    local = built(store, purge_uploads_after=Duration(0.05))
    uploads = local.registry.uploads
    abandoned = uploads.start("app")
    await uploads.feed(abandoned, chunks(b"half"))
    uploads.release(abandoned)
    writing = uploads.start("app")  # a request still holds it: never purged
    job = asyncio.create_task(local.job()())
    try:
        async with asyncio.timeout(5):
            while len(uploads) > 1:
                await asyncio.sleep(0.01)
        assert uploads.status("app", writing.name) is writing
        assert temps(tmp_path) == [writing.temp.path]
        assert not job.done()  # it goes on
    finally:
        job.cancel()
        await asyncio.gather(job, return_exceptions=True)


async def test_stopping_the_purging_job_ends_every_open_upload(
    store: tuple[SqliteIndex, FileBlobStore], tmp_path: Path
) -> None:
    local = built(store)  # a day before anything is abandoned: only the stop ends them
    uploads = local.registry.uploads
    idle, busy = uploads.start("a"), uploads.start("b")
    uploads.release(idle)
    for session in (idle, busy):
        await uploads.feed(session, chunks(b"partial"))
    job = asyncio.create_task(local.job()())
    await asyncio.sleep(0.05)
    assert len(uploads) == 2
    job.cancel()
    await asyncio.gather(job, return_exceptions=True)
    assert job.cancelled()
    assert len(uploads) == 1 and temps(tmp_path) == [busy.temp.path]  # its request goes on
    uploads.release(busy)
    assert len(uploads) == 0 and temps(tmp_path) == []
