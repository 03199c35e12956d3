"""The tier sending clients to the bucket (`store.s3.redirect`), against a real S3
endpoint: a presigned URL any HTTP client can fetch the blob at, whole or by Range, only
for a blob the bucket holds and only when configured; a peer's fill only looks."""

from __future__ import annotations

import aiohttp

from appliance.config.shared import S3Config
from appliance.oci.digest import Digest
from appliance.store.s3 import Bucket
from appliance.store.tier import BlobTier, blob_name, lease_name
from tests.s3engine import engine

DATA = bytes(range(256)) * 4096
DIGEST = Digest.of(DATA)


async def test_a_held_blob_is_fetched_by_anyone_at_its_presigned_url(
    bucket_config: S3Config,
) -> None:
    async with Bucket(bucket_config).open() as bucket:
        tier = BlobTier(bucket, "gw-a", part_bytes=5 << 20, lease_s=30, redirect_s=600)
        await bucket.put(blob_name(DIGEST), DATA)
        found = await tier.location(DIGEST)
        assert found is not None and found[1] == len(DATA)
        url = found[0]
        assert "X-Amz-Signature=" in url and "X-Amz-Expires=600" in url
    async with aiohttp.ClientSession() as plain:  # no credentials: the URL is the key
        async with plain.get(url) as whole:
            assert whole.status == 200 and await whole.read() == DATA
        async with plain.get(url, headers={"Range": "bytes=1000-1999"}) as part:
            assert part.status == 206 and await part.read() == DATA[1000:2000]
        if engine() == "seaweedfs":  # moto checks no signature at all
            async with plain.get(url.replace("X-Amz-Signature=", "X-Amz-Signature=0")) as forged:
                assert forged.status == 403
    assert tier.counts.redirects == 0  # counted once a client is sent there (the cache)
    tier.redirected()
    assert tier.counts.redirects == 1


async def test_no_location_for_a_blob_not_held_or_when_not_configured(
    bucket_config: S3Config,
) -> None:
    async with Bucket(bucket_config).open() as bucket:
        redirecting = BlobTier(bucket, "gw-a", part_bytes=5 << 20, lease_s=30, redirect_s=600)
        assert await redirecting.location(DIGEST) is None
        await bucket.put(blob_name(DIGEST), DATA)
        plain = BlobTier(bucket, "gw-a", part_bytes=5 << 20, lease_s=30)
        assert await plain.location(DIGEST) is None
        assert (redirecting.counts.redirects, plain.counts.redirects) == (0, 0)


async def test_a_fill_a_peer_leads_only_looks_and_takes_no_lease(bucket_config: S3Config) -> None:
    async with Bucket(bucket_config).open() as bucket:
        tier = BlobTier(bucket, "gw-a", part_bytes=5 << 20, lease_s=30)
        shared = await tier.find(DIGEST, lead=False)
        assert shared.reply is None and shared.replica is None
        assert await bucket.head(lease_name(DIGEST)) is None
        led = await tier.find(DIGEST)  # this gateway leads: a lease, and a replica
        assert led.replica is not None and await bucket.head(lease_name(DIGEST)) is not None
        led.replica.abandon()
