"""The shared tier's upkeep: the eviction policy (oldest first, by age then size, never
what a gateway holds or what was just shared), and a pass against a real S3 endpoint
(moto's server): one gateway at a time, holds of live gateways honoured."""

from __future__ import annotations

import asyncio
import time

import pytest

from appliance.config.shared import S3Config
from appliance.store import upkeep
from appliance.store.s3 import Bucket, Listed
from appliance.store.upkeep import Policy, choose, evict, held, publish_holds

NOW = 1_000_000_000.0
DAY = 86400.0


def blob(hex_: str, size: int, age_s: float) -> Listed:
    return Listed(f"blobs/sha256/{hex_}", size, '"e"', NOW - age_s)


def names(chosen: list[Listed]) -> list[str]:
    return [b.name.rsplit("/", 1)[1] for b in chosen]


def test_by_size_the_oldest_go_until_the_rest_fits() -> None:
    blobs = [blob("new", 100, 2 * DAY), blob("old", 100, 9 * DAY), blob("mid", 100, 5 * DAY)]
    assert names(choose(blobs, set(), Policy(150, None), NOW)) == ["old", "mid"]
    assert choose(blobs, set(), Policy(300, None), NOW) == []


def test_by_age_what_was_shared_longer_ago_goes() -> None:
    blobs = [blob("new", 100, 2 * DAY), blob("old", 100, 9 * DAY), blob("mid", 100, 5 * DAY)]
    assert names(choose(blobs, set(), Policy(None, 4 * DAY), NOW)) == ["old", "mid"]
    assert names(choose(blobs, set(), Policy(10_000, 6 * DAY), NOW)) == ["old"]


def test_held_young_and_foreign_objects_are_never_chosen() -> None:
    blobs = [
        blob("held", 100, 9 * DAY),
        blob("young", 100, 60.0),  # just shared: a gateway may be about to hold it
        Listed("blobs/probe", 100, '"e"', NOW - 9 * DAY),  # not a name regcache writes
        blob("free", 100, 8 * DAY),
    ]
    assert names(choose(blobs, {"sha256:held"}, Policy(0, 1.0), NOW)) == ["free"]


async def test_a_pass_evicts_what_no_live_gateway_holds(
    bucket_config: S3Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upkeep, "_MIN_AGE_S", 0.0)
    async with Bucket(bucket_config).open() as bucket:
        for hex_ in ("aa", "bb", "cc"):  # oldest first, a second apart (S3's resolution)
            await bucket.put(f"blobs/sha256/{hex_}", b"x" * 10)
            await asyncio.sleep(1.1)
        await publish_holds(bucket, "gw-b", ["sha256:aa"])
        assert await held(bucket, time.time()) == {"sha256:aa"}
        # 30 bytes, 20 allowed: the oldest goes, but gw-b holds it; the next one goes.
        result = await evict(bucket, "gw-a", Policy(20, None), lease_s=30)
        assert result is not None and (result.objects, result.bytes, result.kept_held) == (1, 10, 1)
        left = [item.name async for item in bucket.listing("blobs/")]
        assert left == ["blobs/sha256/aa", "blobs/sha256/cc"]
        assert [item.name async for item in bucket.listing("leases/")] == []  # released
        monkeypatch.setattr(upkeep, "_HOLD_TTL_S", -1.0)  # gw-b's holds now count as gone
        result = await evict(bucket, "gw-a", Policy(10, None), lease_s=30)
        assert result is not None and result.objects == 1
        assert [item.name async for item in bucket.listing("blobs/")] == ["blobs/sha256/cc"]


async def test_only_one_gateway_evicts_at_a_time(bucket_config: S3Config) -> None:
    async with Bucket(bucket_config).open() as bucket:
        await bucket.put("leases/upkeep", b'{"gateway": "gw-b"}')
        assert await evict(bucket, "gw-a", Policy(0, None), lease_s=30) is None
