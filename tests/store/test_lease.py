"""Lease objects against a real S3 endpoint (moto's server): one holder at a time, kept
while renewed, taken over once lapsed by the endpoint's clock, gone when released."""

from __future__ import annotations

import asyncio

from appliance.config.shared import S3Config
from appliance.store.lease import Lease
from appliance.store.s3 import Bucket


async def test_one_holder_at_a_time_and_release_frees_it(bucket_config: S3Config) -> None:
    async with Bucket(bucket_config).open() as bucket:
        first = Lease(bucket, "leases/x", 30, "gw-a")
        second = Lease(bucket, "leases/x", 30, "gw-b")
        assert await first.take()
        assert not await second.take()
        assert second.holder == "gw-a"
        await first.release()
        assert await bucket.head("leases/x") is None
        assert await second.take()
        await second.release()


async def test_a_renewed_lease_holds_and_a_lapsed_one_is_taken_over(
    bucket_config: S3Config,
) -> None:
    async with Bucket(bucket_config).open() as bucket:
        alive = Lease(bucket, "leases/alive", 1.5, "gw-a")
        assert await alive.take()
        await asyncio.sleep(3.5)  # more than two lease spans: renewed meanwhile
        assert not await Lease(bucket, "leases/alive", 1.5, "gw-b").take()
        await alive.release()
        await bucket.put("leases/dead", b'{"gateway": "gw-dead"}')  # nobody renews it
        taker = Lease(bucket, "leases/dead", 1.0, "gw-b")
        for _ in range(40):  # bounded: S3's clock has 1 s steps
            if await taker.take():
                break
            await asyncio.sleep(0.25)
        assert taker.taken_over == 1
        await taker.release()
