"""An S3-compatible bucket, the only module that speaks to one (aiobotocore): objects put,
read as a stream (Range forwarded), written only if absent or unchanged, and multipart
uploads; each library failure translated into one of three errors.

aiobotocore and botocore are imported when a bucket is opened, not with this module: a
regcache without a shared tier never loads them (about 10 MiB of resident memory, and
a slower start)."""

from __future__ import annotations

import contextlib
import email.utils
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp.abc import AbstractResolver

from appliance.config.shared import S3Config

if TYPE_CHECKING:
    from botocore.exceptions import ClientError
    from types_aiobotocore_s3 import S3Client

log = logging.getLogger(__name__)

_CHUNK_BYTES = 1 << 20


class BucketUnavailable(RuntimeError):
    """The endpoint could not be reached, timed out, or answered 5xx: try again later."""


class BucketRefused(RuntimeError):
    """The endpoint answered, but no (403, a missing bucket, a malformed request)."""


class Conflict(RuntimeError):
    """A conditional write lost: the object exists (If-None-Match) or changed (If-Match)."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    size: int
    etag: str
    age_s: float
    """Since it was last written, by the endpoint's own clock (its Date header), so
    gateways whose clocks disagree agree on how old a lease is."""
    content_type: str = ""


@dataclass(frozen=True, slots=True)
class Listed:
    name: str
    size: int
    etag: str
    modified_s: float
    """When it was last written (epoch seconds, the endpoint's clock)."""


class ObjectBody:
    """A GET's body, read as a stream: close it when done."""

    def __init__(self, response: Any) -> None:
        self._body = response["Body"]
        self.length: int = int(response["ContentLength"])
        self.etag: str = response.get("ETag", "")
        self.content_type: str = response.get("ContentType", "")

    async def chunks(self, size: int = _CHUNK_BYTES) -> AsyncIterator[bytes]:
        try:
            while chunk := await self._body.read(size):
                yield chunk
        except _transport_errors() as e:
            raise BucketUnavailable(f"reading an object: {e}") from e

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.chunks()])

    def close(self) -> None:
        self._body.close()


class Bucket:
    """One bucket under a key prefix; open it with `open` (an async context)."""

    def __init__(self, config: S3Config, resolver: AbstractResolver | None = None) -> None:
        self.config = config
        self._resolver = resolver
        """How the endpoint's name is resolved (regcache's own resolver: never the
        gateway's DNS, which may be regcache itself); None: the system's."""
        self.name = config.bucket
        self._prefix = config.key_prefix()
        self._client: S3Client | None = None

    @contextlib.asynccontextmanager
    async def open(self) -> AsyncIterator[Bucket]:
        import aiobotocore.session
        from aiobotocore.config import AioConfig

        config = self.config
        key_id = secret = None
        if config.credentials is not None:
            key_id = config.credentials.access_key_id.read()
            secret = config.credentials.secret_access_key.read()
        verify: bool | str = config.verify_tls
        if config.verify_tls and config.ca_bundle is not None:
            verify = str(config.ca_bundle)
        settings = AioConfig(
            s3={"addressing_style": "path" if config.force_path_style else "auto"},
            connect_timeout=3,
            read_timeout=30,
            retries={"max_attempts": 2, "mode": "standard"},
            max_pool_connections=64,
            signature_version="s3v4",  # also for presigned URLs (`redirect`), not SigV2's
            # Digests are verified end to end by the cache; no second checksum per byte.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            connector_args={"resolver": self._resolver} if self._resolver is not None else None,
        )
        session = aiobotocore.session.get_session()
        async with session.create_client(
            "s3",
            endpoint_url=config.endpoint,
            region_name=config.region,
            verify=verify,
            config=settings,
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
        ) as client:
            self._client = client
            try:
                yield self
            finally:
                self._client = None

    def key(self, name: str) -> str:
        return self._prefix + name

    @property
    def _s3(self) -> S3Client:
        if self._client is None:
            raise BucketUnavailable("the bucket is not open")
        return self._client

    async def check(self) -> None:
        """That the bucket is there and these credentials may use it (a HEAD of it)."""
        try:
            await self._s3.head_bucket(Bucket=self.name)
        except Exception as e:
            raise _translated(e, f"bucket {self.name}") from e

    async def head(self, name: str) -> ObjectInfo | None:
        """The object's size, ETag and age; None if there is none."""
        try:
            reply = await self._s3.head_object(Bucket=self.name, Key=self.key(name))
        except Exception as e:
            if _status(e) == 404:
                return None
            raise _translated(e, f"HEAD {name}") from e
        return ObjectInfo(int(reply["ContentLength"]), reply["ETag"], _age_s(reply),
                          reply.get("ContentType", ""))  # fmt: skip

    async def get(self, name: str, first: int = 0, last: int | None = None) -> ObjectBody | None:
        """Bytes [first, last] (inclusive, as HTTP Range) or the whole object; None if
        there is none."""
        extra: dict[str, Any] = {}
        if first or last is not None:
            extra["Range"] = f"bytes={first}-{'' if last is None else last}"
        try:
            reply = await self._s3.get_object(Bucket=self.name, Key=self.key(name), **extra)
        except Exception as e:
            if _status(e) == 404:
                return None
            raise _translated(e, f"GET {name}") from e
        return ObjectBody(reply)

    async def put(
        self,
        name: str,
        body: bytes,
        *,
        if_absent: bool = False,
        if_match: str | None = None,
        content_type: str | None = None,
    ) -> str:
        """Write an object; its new ETag. Conflict if `if_absent` and it exists, or if it
        is no longer `if_match` (removed meanwhile, too: S3 answers 404 to that, some
        S3-compatible stores 412)."""
        extra: dict[str, Any] = {}
        if content_type is not None:
            extra["ContentType"] = content_type
        if if_absent:
            extra["IfNoneMatch"] = "*"
        if if_match is not None:
            extra["IfMatch"] = if_match
        try:
            reply = await self._s3.put_object(
                Bucket=self.name, Key=self.key(name), Body=body, **extra
            )
        except Exception as e:
            if if_match is not None and _code(e) == "NoSuchKey":
                raise Conflict(f"PUT {name}: precondition failed (removed)") from e
            raise _translated(e, f"PUT {name}") from e
        return reply["ETag"]

    async def presign(self, name: str, expires_s: int) -> str:
        """A URL anyone holding it may GET the object at for `expires_s` (SigV4 query
        signature: made here, no request is sent)."""
        try:
            return await self._s3.generate_presigned_url(
                "get_object", Params={"Bucket": self.name, "Key": self.key(name)},
                ExpiresIn=expires_s,
            )  # fmt: skip
        except Exception as e:
            raise _translated(e, f"presign {name}") from e

    async def delete(self, name: str) -> None:
        try:
            await self._s3.delete_object(Bucket=self.name, Key=self.key(name))
        except Exception as e:
            raise _translated(e, f"DELETE {name}") from e

    async def listing(self, under: str) -> AsyncIterator[Listed]:
        """Every object whose name starts with `under`, in name order."""
        paginator = self._s3.get_paginator("list_objects_v2")
        try:
            async for page in paginator.paginate(Bucket=self.name, Prefix=self.key(under)):
                for item in page.get("Contents", []):
                    name = item["Key"][len(self._prefix) :]
                    modified = item["LastModified"].timestamp()
                    yield Listed(name, int(item["Size"]), item.get("ETag", ""), modified)
        except Exception as e:
            raise _translated(e, f"LIST {under}") from e

    async def start_upload(self, name: str) -> str:
        try:
            reply = await self._s3.create_multipart_upload(Bucket=self.name, Key=self.key(name))
        except Exception as e:
            raise _translated(e, f"multipart start {name}") from e
        return reply["UploadId"]

    async def upload_part(self, name: str, upload: str, number: int, body: bytes) -> str:
        try:
            reply = await self._s3.upload_part(
                Bucket=self.name, Key=self.key(name), UploadId=upload, PartNumber=number,
                Body=body,
            )  # fmt: skip
        except Exception as e:
            raise _translated(e, f"multipart part {number} of {name}") from e
        return reply["ETag"]

    async def complete_upload(self, name: str, upload: str, etags: list[str]) -> None:
        """Make the uploaded parts the object, only if no object has the name yet (a
        Conflict otherwise: the upload is then still to be aborted)."""
        parts = [{"ETag": etag, "PartNumber": i} for i, etag in enumerate(etags, 1)]
        try:
            await self._s3.complete_multipart_upload(
                Bucket=self.name, Key=self.key(name), UploadId=upload,
                MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
                IfNoneMatch="*",
            )  # fmt: skip
        except Exception as e:
            raise _translated(e, f"multipart complete {name}") from e

    async def abort_upload(self, name: str, upload: str) -> None:
        try:
            await self._s3.abort_multipart_upload(
                Bucket=self.name, Key=self.key(name), UploadId=upload
            )
        except Exception as e:
            if _status(e) != 404:  # gone already
                raise _translated(e, f"multipart abort {name}") from e


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Failures that mean "try again later" (evaluated when one is raised)."""
    from botocore.exceptions import BotoCoreError

    return (BotoCoreError, OSError, TimeoutError)


def _client_error(error: BaseException) -> ClientError | None:
    """`error` if it is botocore's answer from the endpoint (an HTTP status), else None."""
    from botocore.exceptions import ClientError

    return error if isinstance(error, ClientError) else None


def _status(error: BaseException) -> int | None:
    if (answered := _client_error(error)) is None:
        return None
    status = answered.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status is not None else None


def _code(error: BaseException) -> str:
    if (answered := _client_error(error)) is None:
        return "?"
    return str(answered.response.get("Error", {}).get("Code", "?"))


def _translated(error: Exception, doing: str) -> Exception:
    """One of ours for a library or transport failure; anything else unchanged (a bug)."""
    status = _status(error)
    if status == 412 or (status == 409 and "Conditional" in str(error)):
        return Conflict(f"{doing}: precondition failed")
    if _client_error(error) is not None:
        code = _code(error)
        if status is None or status >= 500 or status == 429:
            return BucketUnavailable(f"{doing}: {status} {code}")
        return BucketRefused(f"{doing}: {status} {code}")
    if isinstance(error, _transport_errors()):
        return BucketUnavailable(f"{doing}: {error}")
    return error


def _age_s(reply: Any) -> float:
    headers = reply.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    modified = reply.get("LastModified")
    try:
        now = email.utils.parsedate_to_datetime(headers["date"])
    except (KeyError, TypeError, ValueError):
        return 0.0
    return 0.0 if modified is None else max(0.0, (now - modified).total_seconds())
