"""The shared blob tier against a real S3 endpoint (moto's server on loopback, or SeaweedFS:
tests/s3engine.py): a fill's body becomes an object only whole and verified, one gateway
fills while another waits, a lapsed lease is taken over, and the bucket's trouble never
fails a fill."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator

import boto3
import pytest

from appliance.config.shared import S3Config
from appliance.oci.digest import Digest
from appliance.store.s3 import Bucket
from appliance.store.tier import BlobTier, blob_name, lease_name
from tests.harness import free_port
from tests.s3engine import KEY_ID, SECRET

MIB = 1 << 20


def digest_of(data: bytes) -> Digest:
    return Digest.parse("sha256:" + hashlib.sha256(data).hexdigest())


async def body_of(
    data: bytes, chunk: int = MIB, fail_at: int | None = None
) -> AsyncIterator[bytes]:
    for start in range(0, len(data), chunk):
        if fail_at is not None and start >= fail_at:
            raise RuntimeError("upstream body ended early")
        await asyncio.sleep(0)
        yield data[start : start + chunk]


def open_uploads(config: S3Config) -> list[str]:
    client = boto3.client("s3", endpoint_url=config.endpoint, region_name="us-east-1",
                          aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET)  # fmt: skip
    uploads = client.list_multipart_uploads(Bucket=config.bucket).get("Uploads", [])
    client.close()
    return [u["Key"] for u in uploads]


async def read_all(tier: BlobTier, digest: Digest) -> bytes:
    shared = await tier.find(digest)
    assert shared.reply is not None and shared.replica is None
    try:
        return b"".join([chunk async for chunk in shared.reply.chunks()])
    finally:
        shared.reply.close()


async def test_a_fill_is_shared_in_parts_and_read_back_whole(bucket_config: S3Config) -> None:
    data = bytes(range(256)) * (12 * MIB // 256 + 7)  # three parts of 5 MiB, the last short
    digest = digest_of(data)
    async with Bucket(bucket_config).open() as bucket:
        tier = BlobTier(bucket, "gw-a", part_bytes=5 * MIB, lease_s=30)
        shared = await tier.find(digest)
        assert shared.reply is None and shared.replica is not None
        assert await bucket.head(lease_name(digest)) is not None  # held while it fills
        await shared.replica.write(body_of(data))
        assert await bucket.head(lease_name(digest)) is None
        info = await bucket.head(blob_name(digest))
        assert info is not None and info.size == len(data)
        assert await read_all(tier, digest) == data
        assert (tier.counts.uploads, tier.counts.upload_bytes) == (1, len(data))
        assert tier.counts.reads == 1 and tier.counts.read_bytes == len(data)
        assert open_uploads(bucket_config) == []


async def test_a_failed_fill_leaves_no_object_and_no_upload(bucket_config: S3Config) -> None:
    data = b"x" * (11 * MIB)
    digest = digest_of(data)
    async with Bucket(bucket_config).open() as bucket:
        tier = BlobTier(bucket, "gw-a", part_bytes=5 * MIB, lease_s=30)
        shared = await tier.find(digest)
        assert shared.replica is not None
        await shared.replica.write(body_of(data, fail_at=6 * MIB))  # one part was sent
        assert await bucket.head(blob_name(digest)) is None
        assert await bucket.head(lease_name(digest)) is None
        assert open_uploads(bucket_config) == []
        assert tier.counts.uploads == 0


async def test_a_small_blob_is_one_conditional_put(bucket_config: S3Config) -> None:
    data = b"small layer"
    digest = digest_of(data)
    async with Bucket(bucket_config).open() as bucket:
        tier = BlobTier(bucket, "gw-a", part_bytes=5 * MIB, lease_s=30)
        shared = await tier.find(digest)
        assert shared.replica is not None
        await bucket.put(blob_name(digest), data)  # another gateway's, meanwhile
        await shared.replica.write(body_of(data))
        assert tier.counts.already_there == 1 and tier.counts.uploads == 0
        assert await read_all(tier, digest) == data


async def test_a_second_gateway_waits_for_the_first_ones_fill(bucket_config: S3Config) -> None:
    data = b"y" * (6 * MIB)
    digest = digest_of(data)
    async with Bucket(bucket_config).open() as a, Bucket(bucket_config).open() as b:
        first = BlobTier(a, "gw-a", part_bytes=5 * MIB, lease_s=30)
        second = BlobTier(b, "gw-b", part_bytes=5 * MIB, lease_s=30)
        leading = await first.find(digest)
        assert leading.replica is not None
        waiting = asyncio.ensure_future(second.find(digest))
        await asyncio.sleep(0.5)
        assert not waiting.done()  # no second upstream fetch: it waits
        await leading.replica.write(body_of(data))
        shared = await asyncio.wait_for(waiting, 10)
        assert shared.reply is not None and shared.replica is None
        shared.reply.close()
        assert second.counts.waits == 1 and second.counts.takeovers == 0


async def test_a_lease_won_after_the_other_fill_completed_reads_the_object(
    bucket_config: S3Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = b"raced"
    digest = digest_of(data)
    async with Bucket(bucket_config).open() as a, Bucket(bucket_config).open() as b:
        put = b.put

        async def put_after_the_other_fill(name: str, body: bytes, **how: object) -> str:
            if name == lease_name(digest):  # gw-a completes its object and lets go just now
                await a.put(blob_name(digest), data, if_absent=True)
            return await put(name, body, **how)  # type: ignore[arg-type]

        monkeypatch.setattr(b, "put", put_after_the_other_fill)
        second = BlobTier(b, "gw-b", part_bytes=5 * MIB, lease_s=30)
        assert await read_all(second, digest) == data  # read, not a second upstream fetch
        assert await a.head(lease_name(digest)) is None  # the lease it took is let go


async def test_a_lapsed_lease_is_taken_over(bucket_config: S3Config) -> None:
    digest = digest_of(b"orphan")
    async with Bucket(bucket_config).open() as a, Bucket(bucket_config).open() as b:
        # The first gateway took the lease and died: nobody renews it.
        await a.put(lease_name(digest), b'{"gateway": "gw-dead"}', if_absent=True)
        second = BlobTier(b, "gw-b", part_bytes=5 * MIB, lease_s=1)
        shared = await asyncio.wait_for(second.find(digest), 30)
        assert shared.reply is None and shared.replica is not None
        assert second.counts.takeovers == 1 and second.counts.waits == 1
        await shared.replica.write(body_of(b"orphan"))
        assert await read_all(second, digest) == b"orphan"


async def test_a_lease_is_renewed_while_its_fill_runs(bucket_config: S3Config) -> None:
    digest = digest_of(b"slow")
    async with Bucket(bucket_config).open() as a, Bucket(bucket_config).open() as b:
        first = BlobTier(a, "gw-a", part_bytes=5 * MIB, lease_s=1.5)
        second = BlobTier(b, "gw-b", part_bytes=5 * MIB, lease_s=1.5)
        leading = await first.find(digest)
        assert leading.replica is not None
        waiting = asyncio.ensure_future(second.find(digest))
        await asyncio.sleep(4)  # well past one lease: renewed, not taken over
        assert not waiting.done()
        await leading.replica.write(body_of(b"slow"))
        shared = await asyncio.wait_for(waiting, 10)
        assert shared.reply is not None and second.counts.takeovers == 0
        shared.reply.close()


async def test_distrust_removes_the_object(bucket_config: S3Config) -> None:
    digest = digest_of(b"right")
    async with Bucket(bucket_config).open() as bucket:
        await bucket.put(blob_name(digest), b"wrong bytes")
        tier = BlobTier(bucket, "gw-a", part_bytes=5 * MIB, lease_s=30)
        tier.distrust(digest)
        for _ in range(100):
            if await bucket.head(blob_name(digest)) is None:
                break
            await asyncio.sleep(0.05)
        assert await bucket.head(blob_name(digest)) is None
        assert tier.counts.distrusted == 1


async def test_a_bucket_that_does_not_answer_sends_fills_upstream_unshared(
    bucket_config: S3Config,
) -> None:
    down = S3Config(endpoint=f"http://127.0.0.1:{free_port()}", bucket="regcache",
                    force_path_style=True, credentials=bucket_config.credentials)  # fmt: skip
    async with Bucket(down).open() as bucket:
        tier = BlobTier(bucket, "gw-a", part_bytes=5 * MIB, lease_s=30)
        assert tier.problem() is None
        shared = await tier.find(digest_of(b"z"))
        assert shared.reply is None and shared.replica is None
        assert tier.problem() is not None and "find" in (tier.problem() or "")
        assert tier.counts.failures == {"find": 1}
        shared = await tier.find(digest_of(b"z"))  # resting: not asked again at once
        assert shared.replica is None and tier.counts.failures == {"find": 1}
        assert await tier.probe() is not None


async def test_a_survey_counts_what_the_bucket_holds(bucket_config: S3Config) -> None:
    async with Bucket(bucket_config).open() as bucket:
        tier = BlobTier(bucket, "gw-a", part_bytes=5 * MIB, lease_s=30)
        assert tier.last_survey is None
        for data in (b"one", b"three"):
            await bucket.put(blob_name(digest_of(data)), data)
        await bucket.put(lease_name(digest_of(b"filling")), b"{}")
        survey = await tier.survey()
        assert (survey.objects, survey.bytes, survey.complete, survey.leases) == (2, 8, True, 1)
        assert tier.last_survey == survey


async def test_a_manifest_is_shared_once_with_its_media_type(bucket_config: S3Config) -> None:
    body, kind = b'{"schemaVersion":2}', "application/vnd.oci.image.manifest.v1+json"
    digest = digest_of(body)
    async with Bucket(bucket_config).open() as bucket:
        tier = BlobTier(bucket, "gw-a", part_bytes=5 * MIB, lease_s=30)
        assert await tier.manifest(digest) is None
        for _ in range(2):  # the second finds the first's copy: no error, no second upload
            tier.share_manifest(digest, body, kind)
            for _ in range(100):
                if tier.counts.manifest_uploads or tier.counts.failures:
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)
        assert tier.counts.manifest_uploads == 1 and tier.counts.failures == {}
        assert await tier.manifest(digest) == (body, kind)
        assert tier.counts.manifest_reads == 1
