"""The shared tier as `regcache serve` opens it: none unless configured, a bucket that
does not answer only degrades (never refuses to start), unreadable keys name their key."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from appliance.admin.metrics import Metrics
from appliance.config.model import IPAddress, StartupError
from appliance.local.registry import LocalRegistry
from appliance.local.uploads import LocalUploads
from appliance.runtime.sharing import (
    _conditional_writes,
    degraded,
    examine,
    mirror_records,
    open_tier,
    shared_records,
    sharing_jobs,
    tier_section,
    upkeep_once,
)
from appliance.store import upkeep
from appliance.store.files import FileBlobStore
from appliance.store.index import SqliteIndex
from appliance.store.sharedlocal import SharedLocal
from appliance.store.sharedmirror import SharedMirror
from tests.harness import free_port
from tests.runtime.configs import config
from tests.s3engine import KEY_ID, SECRET, make_bucket


def s3(endpoint: str, bucket: str, key_ref: str = "{env: T_SECRET}") -> str:
    return (
        f"store:\n  s3:\n    endpoint: {endpoint}\n    bucket: {bucket}\n"
        f"    force_path_style: true\n"
        f"    credentials: {{access_key_id: {{env: T_KEY_ID}}, secret_access_key: {key_ref}}}\n"
    )


async def resolve_here(host: str) -> tuple[IPAddress, ...]:
    """regcache's own resolver, as `resolve:` would make it: s3-test-endpoint (no dot:
    moto takes it as path style) is 127.0.0.1."""
    if host == "s3-test-endpoint":
        return (ipaddress.ip_address("127.0.0.1"),)
    raise OSError(f"{host}: not resolvable here")


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("T_KEY_ID", KEY_ID)
    monkeypatch.setenv("T_SECRET", SECRET)


async def test_no_section_no_tier(tmp_path: Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        assert await open_tier(stack, config(tmp_path), Metrics(), resolve_here) is None
    assert await degraded(None, []) == []
    assert await degraded(None, ["peer 10.0.0.2:443: down"]) == ["peer 10.0.0.2:443: down"]


async def test_a_reachable_bucket_is_not_degraded(tmp_path: Path, s3_endpoint: str) -> None:
    bucket = make_bucket(s3_endpoint)
    async with contextlib.AsyncExitStack() as stack:
        metrics = Metrics()
        tier = await open_tier(
            stack, config(tmp_path, s3(s3_endpoint, bucket)), metrics, resolve_here
        )
        assert tier is not None and tier.bucket == bucket
        assert await degraded(tier, []) == []
        tier.counts.reads += 2
        tier.counts.failures["find"] = 1
        text = metrics.render().decode()
        assert "regcache_shared_reads_total 2.0" in text
        assert 'regcache_shared_failures_total{doing="find"} 1.0' in text


async def test_the_endpoint_name_is_resolved_by_regcache_not_the_system(
    tmp_path: Path, s3_endpoint: str
) -> None:
    """A name only regcache's own resolver knows (its `resolve:` map, its resolvers):
    never the gateway's DNS, which may be regcache itself."""
    bucket = make_bucket(s3_endpoint)
    named = s3_endpoint.replace("127.0.0.1", "s3-test-endpoint")
    async with contextlib.AsyncExitStack() as stack:
        tier = await open_tier(stack, config(tmp_path, s3(named, bucket)), Metrics(), resolve_here)
        assert tier is not None and await degraded(tier, []) == []


async def test_a_missing_bucket_or_a_dead_endpoint_degrades(
    tmp_path: Path, s3_endpoint: str
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    for endpoint, bucket, says in ((s3_endpoint, "not-made", "404"), (dead, "regcache", "")):
        async with contextlib.AsyncExitStack() as stack:
            tier = await open_tier(
                stack, config(tmp_path, s3(endpoint, bucket)), Metrics(), resolve_here
            )
            assert tier is not None
            problems = await degraded(tier, [])
            assert len(problems) == 1 and f"bucket {bucket}" in problems[0] and says in problems[0]


async def test_unreadable_keys_name_their_key(tmp_path: Path, s3_endpoint: str) -> None:
    missing = tmp_path / "no-such-secret"
    with pytest.raises(StartupError, match=r"store\.s3\.credentials: cannot read"):
        async with contextlib.AsyncExitStack() as stack:
            section = s3(s3_endpoint, "x-y-z", f"{{file: {missing}}}")
            await open_tier(stack, config(tmp_path, section), Metrics(), resolve_here)


async def test_mirror_tags_are_shared_only_with_a_bucket(tmp_path: Path, s3_endpoint: str) -> None:
    bucket = make_bucket(s3_endpoint)
    index = await SqliteIndex.open(tmp_path / "index.sqlite")
    try:
        alone = config(tmp_path)
        assert mirror_records(None, index, alone) is index
        assert sharing_jobs(alone, index, index, None) == {}
        async with shared_records(alone, index) as rows:
            assert rows is index
        shared = config(tmp_path, s3(s3_endpoint, bucket))
        async with contextlib.AsyncExitStack() as stack:
            tier = await open_tier(stack, shared, Metrics(), resolve_here)
            rows = mirror_records(tier, index, shared)
            assert isinstance(rows, SharedMirror)
            assert sorted(sharing_jobs(shared, index, rows, tier)) == [
                "mirror-share", "tier-upkeep"
            ]  # fmt: skip
        async with shared_records(shared, index) as rows:
            assert isinstance(rows, SharedMirror)
            assert await rows.converge() == 0  # the bucket answers: nothing shared yet
    finally:
        await index.close()


async def test_the_status_section_names_the_bucket_and_its_trouble(
    tmp_path: Path, s3_endpoint: str
) -> None:
    assert tier_section(None) == ""
    bucket = make_bucket(s3_endpoint)
    async with contextlib.AsyncExitStack() as stack:
        tier = await open_tier(stack, config(tmp_path, s3(s3_endpoint, bucket)), Metrics(),
                               resolve_here)  # fmt: skip
        assert tier is not None
        text = tier_section(tier)
        assert bucket in text and "not surveyed yet" in text and "DEGRADED" not in text
        await tier.survey()
        assert "0 blobs" in tier_section(tier)
        tier.note_trouble("find", RuntimeError("refused"))
        assert "DEGRADED: find: refused" in tier_section(tier)


async def test_doctor_finds_a_working_bucket(tmp_path: Path, s3_endpoint: str) -> None:
    assert await examine(config(tmp_path)) == []
    bucket = make_bucket(s3_endpoint)
    found = await examine(config(tmp_path, s3(s3_endpoint, bucket)))
    assert [(f.check, f.ok) for f in found] == [
        (f"s3 bucket {bucket}", True), ("s3 conditional writes", True), ("s3 holds", True),
    ]  # fmt: skip
    assert found[2].detail == "0 blobs, 0 B; 0 fills leading now"


async def test_doctor_names_the_fix_for_a_missing_bucket_or_endpoint(
    tmp_path: Path, s3_endpoint: str
) -> None:
    missing = await examine(config(tmp_path, s3(s3_endpoint, "never-made")))
    assert [(f.ok, "create the bucket" in f.fix) for f in missing] == [(False, True)]
    dead = await examine(config(tmp_path, s3(f"http://127.0.0.1:{free_port()}", "x-y-z")))
    assert [(f.ok, "store.s3.endpoint" in f.fix) for f in dead] == [(False, True)]


async def test_an_engine_that_ignores_conditions_is_caught() -> None:
    class Careless:
        """A bucket that takes every PUT, conditional or not."""

        async def put(self, name: str, body: bytes, **_conditions: object) -> str:
            return '"etag"'

        async def delete(self, name: str) -> None:
            pass

    assert await _conditional_writes(Careless()) is False  # type: ignore[arg-type]


async def test_upkeep_publishes_holds_evicts_by_policy_and_counts(
    tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upkeep, "_MIN_AGE_S", 0.0)
    bucket = make_bucket(s3_endpoint)
    index = await SqliteIndex.open(tmp_path / "index.sqlite")
    section = s3(s3_endpoint, bucket) + "    max_size: 1\n"
    try:
        async with contextlib.AsyncExitStack() as stack:
            shared = config(tmp_path, section)
            tier = await open_tier(stack, shared, Metrics(), resolve_here)
            assert tier is not None
            await tier.objects.put("blobs/sha256/ab", b"old blob")
            evicted = await upkeep_once(shared, index, tier)
            assert evicted is not None and evicted.objects == 1
            holds = [i.name async for i in tier.objects.listing("holds/")]
            assert holds == [f"holds/{tier.gateway}"]
            assert tier.last_survey is not None and tier.last_survey.objects == 0
    finally:
        await index.close()


async def test_the_local_registry_is_shared_only_with_a_bucket(
    tmp_path: Path, s3_endpoint: str
) -> None:
    index = await SqliteIndex.open(tmp_path / "index.sqlite")
    files = FileBlobStore(tmp_path)
    files.prepare()
    registry = LocalRegistry(
        index, files, LocalUploads(files, purge_after_s=3600.0, max_sessions=16), "registry.local"
    )
    try:
        assert "local-share" not in sharing_jobs(config(tmp_path), index, index, None,
                                                 (registry, files))  # fmt: skip
        assert registry.replica is None
        shared = config(tmp_path, s3(s3_endpoint, make_bucket(s3_endpoint)))
        async with contextlib.AsyncExitStack() as stack:
            tier = await open_tier(stack, shared, Metrics(), resolve_here)
            jobs = sharing_jobs(shared, index, index, tier, (registry, files))
            assert sorted(jobs) == ["local-share", "tier-upkeep"]
            assert isinstance(registry.replica, SharedLocal)
            assert not await registry.replica.converge()  # nothing pushed: nothing to do
    finally:
        await index.close()


async def test_the_local_share_job_outlives_an_error_and_waits_for_the_store(
    tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = await SqliteIndex.open(tmp_path / "index.sqlite")
    files = FileBlobStore(tmp_path)
    files.prepare()
    uploads = LocalUploads(files, purge_after_s=3600.0, max_sessions=16)
    registry = LocalRegistry(index, files, uploads, "registry.local")
    ready = asyncio.Event()

    async def when_ready(job: Callable[[], Awaitable[None]]) -> None:
        await ready.wait()
        await job()

    try:
        shared = config(tmp_path, s3(s3_endpoint, make_bucket(s3_endpoint)))
        async with contextlib.AsyncExitStack() as stack:
            tier = await open_tier(stack, shared, Metrics(), resolve_here)
            job = sharing_jobs(shared, index, index, tier, (registry, files), when_ready)
            replica = registry.replica
            assert isinstance(replica, SharedLocal)
            calls = []

            async def failing() -> None:
                calls.append(1)
                if len(calls) == 1:
                    raise OSError(28, "No space left on device")
                raise asyncio.CancelledError

            monkeypatch.setattr(replica, "converge", failing)
            running = asyncio.ensure_future(job["local-share"]())
            replica.changed()
            await asyncio.sleep(0.05)
            assert calls == []  # the store is not ready: nothing yet
            ready.set()
            for _ in range(100):
                if calls:
                    break
                await asyncio.sleep(0.02)
            replica.changed()  # after the error, it goes on
            with pytest.raises(asyncio.CancelledError):
                await asyncio.wait_for(running, 5)
            assert len(calls) == 2
    finally:
        await index.close()
