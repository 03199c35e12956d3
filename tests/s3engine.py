"""A real S3 endpoint on loopback for the tests: moto's server mode (an HTTP S3 API with
multipart uploads, Range and conditional writes), started and stopped by the test."""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.harness import free_port

MOTO_SERVER = Path(sys.executable).parent / "moto_server"
KEY_ID, SECRET = "regcache-test", "regcache-test-secret"


@contextlib.contextmanager
def moto_server(host: str = "127.0.0.1", log: Path | None = None) -> Iterator[str]:
    """The endpoint URL of a moto server listening on `host` until the block ends."""
    port = free_port(host)
    out = open(log, "wb") if log is not None else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(
        [str(MOTO_SERVER), "-H", host, "-p", str(port)], stdout=out, stderr=subprocess.STDOUT
    )
    endpoint = f"http://{host}:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(endpoint + "/moto-api/", timeout=2):  # noqa: S310
                    break
            except (urllib.error.URLError, OSError):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start on {endpoint}") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        if log is not None:
            out.close()  # type: ignore[union-attr]


def bucket_name() -> str:
    """A fresh bucket name, so tests sharing one server never see each other's objects."""
    return f"regcache-{secrets.token_hex(6)}"


def s3_section(endpoint: str, bucket: str, **extra: object) -> dict[str, object]:
    """The `store.s3` config for `endpoint` (keys from the environment variables the
    test sets: REGCACHE_TEST_S3_KEY_ID/_SECRET)."""
    return {
        "endpoint": endpoint,
        "bucket": bucket,
        "force_path_style": True,
        "credentials": {
            "access_key_id": {"env": "REGCACHE_TEST_S3_KEY_ID"},
            "secret_access_key": {"env": "REGCACHE_TEST_S3_SECRET"},
        },
        **extra,
    }


def make_bucket(endpoint: str) -> str:
    """A new, empty bucket on `endpoint` (boto3, which moto brings): its name."""
    import boto3

    name = bucket_name()
    client = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET,
    )  # fmt: skip
    client.create_bucket(Bucket=name)
    client.close()
    return name
