"""The `store.s3` section: a blob tier in an S3-compatible bucket that several gateways
share (issue #19), below each gateway's own disk and above upstream."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from appliance.config.strict_yaml import check
from appliance.config.values import Duration, SecretRef, Size, one_source

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_MIN_PART_BYTES = 5 << 20  # S3's floor for every part but the last
_MAX_PART_BYTES = 5 << 30


def _endpoint(value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"expected a bare endpoint URL (no path or query), got {value!r}")


def _bucket(value: str) -> None:
    if not _BUCKET.fullmatch(value) or ".." in value:
        raise ValueError(
            f"{value!r} is not a bucket name: 3 to 63 of a-z, 0-9, '.' and '-',"
            " starting and ending with a letter or digit"
        )


def _prefix(value: str) -> None:
    if value.startswith("/") or "//" in value or ".." in value.split("/"):
        raise ValueError(f"expected a relative key prefix such as 'regcache/', got {value!r}")


def _part_size(value: Size) -> None:
    if value.percent is not None or not _MIN_PART_BYTES <= value.bytes <= _MAX_PART_BYTES:
        raise ValueError("must be a size between 5MiB and 5GiB (S3's part limits)")


def _bytes_only(value: Size) -> None:
    if value.percent is not None:
        raise ValueError("must be a size in bytes (e.g. 500GiB), not a share of a disk")


def _redirect(value: Duration) -> None:
    if not 60 <= value.seconds <= 7 * 86400:
        raise ValueError("must be between 1m and 7d (how long a presigned URL may last)")


def _lease(value: Duration) -> None:
    if not 5 <= value.seconds <= 3600:
        raise ValueError("must be between 5s and 1h")


@dataclass(frozen=True, slots=True)
class S3Credentials:
    access_key_id: SecretRef = field(metadata=check(one_source))
    secret_access_key: SecretRef = field(metadata=check(one_source))


@dataclass(frozen=True, slots=True)
class S3Config:
    endpoint: str = field(metadata=check(_endpoint))
    """The S3 API's URL (`https://s3.eu-west-1.amazonaws.com`, `http://10.0.0.5:8333`)."""
    bucket: str = field(metadata=check(_bucket))
    """Shared by every gateway; blobs are `<prefix>blobs/sha256/<hex>` in it."""
    region: str = "us-east-1"
    prefix: str = field(default="", metadata=check(_prefix))
    """Keys start with this (`regcache/`), so one bucket can hold other things too."""
    force_path_style: bool = False
    """`endpoint/bucket/key` rather than `bucket.endpoint/key`: most engines other than
    AWS's own (MinIO, SeaweedFS, Ceph RGW) want it."""
    credentials: S3Credentials | None = None
    """Keys read from files or environment variables; unset: the AWS SDK's own chain
    (AWS_ACCESS_KEY_ID…, ~/.aws, an instance role)."""
    part_size: Size = field(default=Size(16 << 20), metadata=check(_part_size))
    """Fills upload in parts of this size while they download (memory per fill)."""
    verify_tls: bool = True
    ca_bundle: Path | None = None
    """Extra CA certificates (PEM) for an https endpoint with a private CA."""
    lease: Duration = field(default=Duration(30.0), metadata=check(_lease))
    """A gateway filling a blob from upstream holds a lease object this long (renewed
    while it runs); another gateway asked for the blob meanwhile waits for it rather
    than fetch it a second time, and takes over once a lease has lapsed."""

    redirect: Duration | None = field(default=None, metadata=check(_redirect))
    """Send clients (307) to the bucket for a blob this gateway lacks and the bucket
    holds, by a presigned URL valid this long (e.g. `15m`): the bytes then flow from the
    bucket to the client, not through the gateway, whose disk does not keep them. The
    clients must reach `endpoint` and trust its certificate. Unset: never."""

    max_size: Size | None = field(default=None, metadata=check(_bytes_only))
    """What the bucket may hold under `blobs/` (e.g. `2TiB`); unset: no bound. The oldest
    blobs no gateway holds (mirrored, pinned, local registry) go first."""
    max_age: Duration | None = None
    """Blobs shared longer ago than this (e.g. `90d`) go, unless a gateway holds them."""

    def key_prefix(self) -> str:
        return self.prefix if not self.prefix or self.prefix.endswith("/") else self.prefix + "/"
