"""The bucket adapter against a real S3 endpoint (moto's server on loopback, or SeaweedFS:
tests/s3engine.py): streamed reads with Range, conditional writes, multipart uploads, and
every failure translated."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import AsyncIterator

import pytest

from appliance.config.shared import S3Config, S3Credentials
from appliance.config.values import SecretRef
from appliance.store.s3 import Bucket, BucketRefused, BucketUnavailable, Conflict
from tests.harness import free_port
from tests.s3engine import KEY_ID, SECRET, engine, make_bucket


def config(endpoint: str, bucket: str, prefix: str = "") -> S3Config:
    return S3Config(
        endpoint=endpoint, bucket=bucket, prefix=prefix, force_path_style=True,
        credentials=S3Credentials(SecretRef(env="T_KEY_ID"), SecretRef(env="T_SECRET")),
    )  # fmt: skip


@pytest.fixture
async def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Bucket]:
    monkeypatch.setenv("T_KEY_ID", KEY_ID)
    monkeypatch.setenv("T_SECRET", SECRET)
    async with Bucket(config(s3_endpoint, make_bucket(s3_endpoint), "gw/")).open() as opened:
        yield opened


async def test_an_object_is_written_once_and_read_whole_or_by_range(bucket: Bucket) -> None:
    await bucket.check()
    assert await bucket.head("blobs/x") is None
    assert await bucket.get("blobs/x") is None
    etag = await bucket.put("blobs/x", b"0123456789", if_absent=True)
    with pytest.raises(Conflict):
        await bucket.put("blobs/x", b"other", if_absent=True)
    info = await bucket.head("blobs/x")
    assert info is not None and info.size == 10 and info.etag == etag
    assert 0 <= info.age_s < 60
    body = await bucket.get("blobs/x", 2, 5)
    assert body is not None and body.length == 4
    assert await body.read() == b"2345"
    body.close()
    whole = await bucket.get("blobs/x")
    assert whole is not None
    assert b"".join([c async for c in whole.chunks(3)]) == b"0123456789"
    whole.close()
    listed = [item async for item in bucket.listing("blobs/")]
    assert [(i.name, i.size, i.etag) for i in listed] == [("blobs/x", 10, etag)]
    assert abs(listed[0].modified_s - time.time()) < 60


async def test_a_write_if_unchanged_loses_to_another_writer(bucket: Bucket) -> None:
    first = await bucket.put("state", b"1")
    second = await bucket.put("state", b"2", if_match=first)
    with pytest.raises(Conflict):
        await bucket.put("state", b"3", if_match=first)  # stale: lost the race
    await bucket.put("state", b"3", if_match=second)
    body = await bucket.get("state")
    assert body is not None and await body.read() == b"3"
    body.close()


async def test_a_write_if_unchanged_to_a_removed_object_is_a_conflict(bucket: Bucket) -> None:
    """S3 (and moto) answer 404 NoSuchKey, SeaweedFS 412: both mean the writer lost."""
    etag = await bucket.put("lease", b"1", if_absent=True)
    await bucket.delete("lease")
    with pytest.raises(Conflict):
        await bucket.put("lease", b"2", if_match=etag)
    assert await bucket.head("lease") is None


async def test_a_multipart_upload_is_visible_only_once_completed(bucket: Bucket) -> None:
    part = bytes(range(256)) * (5 * 4096)  # 5 MiB: S3's smallest part but the last
    upload = await bucket.start_upload("blobs/big")
    etags = [await bucket.upload_part("blobs/big", upload, 1, part)]
    etags.append(await bucket.upload_part("blobs/big", upload, 2, b"tail"))
    assert await bucket.head("blobs/big") is None
    await bucket.complete_upload("blobs/big", upload, etags)
    info = await bucket.head("blobs/big")
    assert info is not None and info.size == len(part) + 4


async def test_completing_over_an_existing_object_is_a_conflict(bucket: Bucket) -> None:
    await bucket.put("blobs/y", b"first", if_absent=True)
    upload = await bucket.start_upload("blobs/y")
    etag = await bucket.upload_part("blobs/y", upload, 1, b"second")
    with pytest.raises(Conflict):
        await bucket.complete_upload("blobs/y", upload, [etag])
    await bucket.abort_upload("blobs/y", upload)
    body = await bucket.get("blobs/y")
    assert body is not None and await body.read() == b"first"
    body.close()


async def test_keys_live_under_the_prefix(bucket: Bucket, s3_endpoint: str) -> None:
    await bucket.put("blobs/z", b"z")
    async with Bucket(config(s3_endpoint, bucket.name)).open() as unprefixed:
        assert await unprefixed.head("blobs/z") is None
        assert await unprefixed.head("gw/blobs/z") is not None


async def test_a_missing_bucket_is_refused(
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("T_KEY_ID", KEY_ID)
    monkeypatch.setenv("T_SECRET", SECRET)
    async with Bucket(config(s3_endpoint, "no-such-bucket")).open() as missing:
        with pytest.raises(BucketRefused, match="404 NoSuchBucket"):
            await missing.put("x", b"x")
        if engine() == "seaweedfs":
            # SeaweedFS 4.48 answers If-Match with 412 before it looks for the bucket: a
            # lost lease to regcache, whose fill then finds the bucket missing on its own.
            with pytest.raises(Conflict):
                await missing.put("x", b"x", if_match='"0123"')
        else:
            with pytest.raises(BucketRefused, match="404 NoSuchBucket"):  # not a lost race
                await missing.put("x", b"x", if_match='"0123"')
        with pytest.raises(BucketRefused, match="bucket no-such-bucket: 404"):
            await missing.check()


async def test_an_endpoint_nobody_listens_on_is_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("T_KEY_ID", KEY_ID)
    monkeypatch.setenv("T_SECRET", SECRET)
    endpoint = f"http://127.0.0.1:{free_port()}"
    async with Bucket(config(endpoint, "regcache")).open() as down:
        with pytest.raises(BucketUnavailable):
            await down.head("x")
        with pytest.raises(BucketUnavailable):
            await down.check()
        with pytest.raises(BucketUnavailable):
            await down.put("x", b"x", if_absent=True)


def test_a_regcache_without_a_shared_tier_never_loads_the_s3_library() -> None:
    """aiobotocore and botocore come with the first bucket opened: the service and the
    CLI import everything else (this module included) without them."""
    script = (
        "import sys, appliance.main, appliance.cli, appliance.store.s3\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'botocore', 'aiobotocore'}))"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
