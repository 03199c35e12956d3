"""The blob tier several gateways share in one bucket (issue #19): each blob one object,
`blobs/sha256/<hex>`, asked for after this gateway's disk and before upstream.

- A fill from upstream is uploaded as it downloads (a multipart upload, fed by reading
  the fill like one more client) and completed only after the fill has verified every
  byte, and only if no object has the name yet (`If-None-Match: *`): a partial or
  unverified body is never visible, and an object is never written twice.
- One upstream fetch across gateways: the gateway that finds a blob missing takes a lease
  object `leases/sha256/<hex>` (again `If-None-Match: *`) and fills; another one asked
  meanwhile waits for the blob to appear, and takes the lease over (`If-Match` on the
  lapsed lease) once its holder stopped renewing it — killed, or cut off.
- Trouble with the bucket never fails a pull: the fill goes upstream unshared, and the
  tier rests for a few seconds before it is asked again (`problem` says why).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field

from appliance.cache.manifests import MAX_MANIFEST_BYTES
from appliance.cache.ports import Shared
from appliance.kit.logfields import fields
from appliance.kit.logthrottle import LogThrottle
from appliance.kit.tasks import spawn
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import OCTET_STREAM
from appliance.store.lease import Lease
from appliance.store.s3 import (
    Bucket,
    BucketRefused,
    BucketUnavailable,
    Conflict,
    Listed,
    ObjectBody,
)

log = logging.getLogger(__name__)
_trouble_log = LogThrottle(log, interval_s=60.0)

_REST_S = 10.0  # after trouble, fills go straight upstream this long
_PROBLEM_S = 30.0  # trouble this recent is reported (`/readyz`: degraded)
_MAX_WAIT_S = 900.0  # for another gateway's fill, at most; then fill anyway
_POLL_S = (0.1, 1.0)  # first and longest pause between looks at a blob being filled
_MAX_PARTS = 10_000  # S3's limit per upload
_PARTS_AT_ONCE = 4  # part buffers in memory at once, across every fill
_SURVEY_LIMIT = 1_000_000  # blobs a listing holds at most (a page is 1,000)
_TierTrouble = (BucketUnavailable, BucketRefused)


def blob_name(digest: Digest) -> str:
    return f"blobs/{digest.algorithm}/{digest.hex}"


def manifest_name(digest: Digest) -> str:
    return f"manifests/{digest.algorithm}/{digest.hex}"


def lease_name(digest: Digest) -> str:
    return f"leases/{digest.algorithm}/{digest.hex}"


@dataclass(slots=True)
class TierCounts:
    """What the tier did since start (metrics, status page, doctor)."""

    reads: int = 0
    read_bytes: int = 0
    uploads: int = 0
    upload_bytes: int = 0
    already_there: int = 0
    """Uploads not completed because another gateway's object came first."""
    waits: int = 0
    """Fills left to another gateway's lease."""
    takeovers: int = 0
    """Leases taken over from a holder that stopped renewing."""
    distrusted: int = 0
    redirects: int = 0
    """Clients sent to the bucket for a blob (`redirect`)."""
    manifest_reads: int = 0
    manifest_uploads: int = 0
    failures: dict[str, int] = field(default_factory=dict)

    def figures(self) -> dict[str, int]:
        """Every count but `failures`, by name."""
        return {name: getattr(self, name) for name in self.__slots__ if name != "failures"}


@dataclass(frozen=True, slots=True)
class Survey:
    """What the bucket holds under `blobs/`, as one listing found it."""

    objects: int
    bytes: int
    complete: bool
    """False: the listing stopped at its bound (`_SURVEY_LIMIT`); the figures are floors."""
    leases: int
    """Fills some gateway leads now."""
    at_s: float


class BlobTier:
    def __init__(
        self,
        bucket: Bucket,
        gateway: str,
        *,
        part_bytes: int,
        lease_s: float,
        redirect_s: int | None = None,
    ) -> None:
        self._bucket = bucket
        self._redirect_s = redirect_s
        self.gateway = gateway
        self._part_bytes = part_bytes
        self._lease_s = lease_s
        self._parts = asyncio.Semaphore(_PARTS_AT_ONCE)
        self._rest_until = 0.0
        self._trouble: tuple[float, str] | None = None
        self.counts = TierCounts()
        self.last_survey: Survey | None = None

    @property
    def bucket(self) -> str:
        return self._bucket.name

    @property
    def objects(self) -> Bucket:
        """The bucket itself, for what else the gateways share there (mirror tags)."""
        return self._bucket

    async def find(self, digest: Digest, *, lead: bool = True) -> Shared:
        if time.monotonic() < self._rest_until:
            return Shared(None)
        name = blob_name(digest)
        try:
            body = await self._bucket.get(name)
            lease = None
            if body is None and not lead:
                return Shared(None)
            if body is None:
                lease = await self._lead_or_wait(digest, name)
                if lease is None:  # another gateway's fill of it is done
                    body = await self._bucket.get(name)
        except _TierTrouble as e:
            self.note_trouble("find", e)
            return Shared(None)
        if body is not None:
            self.counts.reads += 1
            return Shared(_TierReply(body, digest, self.counts))
        return Shared(None, _Upload(self, digest, lease))

    async def location(self, digest: Digest) -> tuple[str, int] | None:
        if self._redirect_s is None or time.monotonic() < self._rest_until:
            return None
        name = blob_name(digest)
        try:
            held = await self._bucket.head(name)
            if held is None:
                return None
            url = await self._bucket.presign(name, self._redirect_s)
        except _TierTrouble as e:
            self.note_trouble("redirect", e)
            return None
        return url, held.size

    def redirected(self) -> None:
        self.counts.redirects += 1

    def distrust(self, digest: Digest) -> None:
        self.counts.distrusted += 1
        log.warning("tier distrusted %s", fields(digest=digest, bucket=self.bucket))
        for name in (blob_name(digest), manifest_name(digest)):
            spawn(self._remove(name), name=f"tier distrust {name}")

    async def manifest(self, digest: Digest) -> tuple[bytes, str] | None:
        if time.monotonic() < self._rest_until:
            return None
        try:
            body = await self._bucket.get(manifest_name(digest))
            if body is None:
                return None
            try:
                if body.length > MAX_MANIFEST_BYTES:
                    return None  # not one regcache wrote
                data = await body.read()
            finally:
                body.close()
        except _TierTrouble as e:
            self.note_trouble("manifest", e)
            return None
        self.counts.manifest_reads += 1
        return data, body.content_type

    def share_manifest(self, digest: Digest, body: bytes, media_type: str) -> None:
        spawn(self._put_manifest(digest, body, media_type), name=f"tier manifest {digest}")

    async def _put_manifest(self, digest: Digest, body: bytes, media_type: str) -> None:
        if time.monotonic() < self._rest_until:
            return
        try:
            await self._bucket.put(manifest_name(digest), body, if_absent=True,
                                   content_type=media_type)  # fmt: skip
        except Conflict:
            return  # another gateway's copy: the same bytes
        except _TierTrouble as e:
            self.note_trouble("manifest-upload", e)
            return
        self.counts.manifest_uploads += 1

    async def _remove(self, name: str) -> None:
        try:
            await self._bucket.delete(name)
        except _TierTrouble as e:
            self.note_trouble("remove", e)

    def note_trouble(self, doing: str, error: Exception) -> None:
        self._rest_until = time.monotonic() + _REST_S
        self._trouble = (time.monotonic(), f"{doing}: {error}")
        self.counts.failures[doing] = self.counts.failures.get(doing, 0) + 1
        _trouble_log.warning(doing, "tier trouble %s", fields(doing=doing, error=error))

    def problem(self) -> str | None:
        """What went wrong with the bucket lately, if anything did."""
        if self._trouble is None or time.monotonic() - self._trouble[0] > _PROBLEM_S:
            return None
        return self._trouble[1]

    async def probe(self) -> str | None:
        """Ask the bucket now (a HEAD): None if it answers, else why not."""
        try:
            await self._bucket.check()
        except _TierTrouble as e:
            self.note_trouble("probe", e)
            return str(e)
        return None

    async def blobs(self) -> tuple[list[Listed], bool]:
        """The bucket's blobs (a LIST walk), and whether that is all of them: the walk
        stops at `_SURVEY_LIMIT`, so memory does not grow with the bucket."""
        found: list[Listed] = []
        async for item in self._bucket.listing("blobs/"):
            if len(found) >= _SURVEY_LIMIT:
                return found, False
            found.append(item)
        return found, True

    async def survey(self, listed: tuple[Sequence[Listed], bool] | None = None) -> Survey:
        """Count what the bucket holds (`blobs`, or what a listing just found); kept as
        `last_survey`."""
        blobs, complete = listed if listed is not None else await self.blobs()
        leases = 0
        async for _ in self._bucket.listing("leases/"):
            leases += 1
        size = sum(item.size for item in blobs)
        self.last_survey = Survey(len(blobs), size, complete, leases, time.time())
        return self.last_survey

    async def _lead_or_wait(self, digest: Digest, name: str) -> Lease | None:
        """This gateway's lease on filling `digest`, or None once another gateway's fill
        of it is in the bucket. Bounded: after `_MAX_WAIT_S` a lease-less fill."""
        lease = Lease(self._bucket, lease_name(digest), self._lease_s, self.gateway)
        deadline = time.monotonic() + _MAX_WAIT_S
        pause, waited = _POLL_S[0], False
        while time.monotonic() < deadline:
            if await lease.take():
                self.counts.takeovers += lease.taken_over
                return await self._unless_filled(lease, name)
            if not waited:
                waited = True
                self.counts.waits += 1
                log.info("tier waiting %s", fields(digest=digest, holder=lease.holder))
            await asyncio.sleep(pause)
            pause = min(pause * 2, _POLL_S[1])
            if await self._bucket.head(name) is not None:
                return None
        log.warning("tier wait-expired %s", fields(digest=digest, waited_s=_MAX_WAIT_S))
        return lease  # not held: the fill goes ahead; `If-None-Match` still guards

    async def _unless_filled(self, lease: Lease, name: str) -> Lease | None:
        """`lease`, unless the blob is in the bucket after all (then None): its filler
        completed it and let go of the lease between our look and our taking the lease
        (a window a store slow to answer a contended conditional write widens: SeaweedFS
        takes a second). Without this look, a second upstream fetch."""
        try:
            there = await self._bucket.head(name) is not None
        except BaseException:
            await lease.release()
            raise
        if not there:
            return lease
        await lease.release()
        return None


class _TierReply:
    """A blob's object, read as an upstream body would be (`UpstreamReply`)."""

    status = 200
    content_type = OCTET_STREAM

    def __init__(self, body: ObjectBody, digest: Digest, counts: TierCounts) -> None:
        self._body = body
        self._counts = counts
        self.digest = digest
        self.length: int | None = body.length
        self.headers: Mapping[str, str] = {}

    async def chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self._body.chunks():
            self._counts.read_bytes += len(chunk)
            yield chunk

    async def read(self, limit: int) -> bytes:
        return (await self._body.read())[:limit]

    def close(self) -> None:
        self._body.close()


class _Upload:
    """A fill's body into the blob's object (`Replica`): parts as they fill, completed
    once the body has ended, which it does only after the fill verified it."""

    def __init__(self, tier: BlobTier, digest: Digest, lease: Lease | None) -> None:
        self._tier = tier
        self._bucket = tier._bucket
        self._digest = digest
        self._name = blob_name(digest)
        self._lease = lease
        self._id: str | None = None
        self._etags: list[str] = []

    def abandon(self) -> None:
        if self._lease is not None:
            spawn(self._lease.release(), name=f"lease release {self._digest}")

    async def write(self, body: AsyncIterator[bytes | bytearray]) -> None:
        done = False
        try:
            done = await self._upload(body)
        except _TierTrouble as e:
            self._tier.note_trouble("upload", e)
        except Conflict:
            self._tier.counts.already_there += 1
        except Exception as e:  # noqa: BLE001 - the fill failed: nothing is to be shared
            log.info("tier upload-dropped %s", fields(digest=self._digest, reason=e))
        finally:
            if self._id is not None and not done:
                with contextlib.suppress(*_TierTrouble):
                    await self._bucket.abort_upload(self._name, self._id)
            if self._lease is not None:
                await self._lease.release()

    async def _upload(self, body: AsyncIterator[bytes | bytearray]) -> bool:
        """True once the object is complete. A part is gathered holding one of the
        tier's part slots, so memory is bounded across fills; a fill whose upload waits
        for a slot reads its bytes from the file later, as a slow client would."""
        chunks = aiter(body)
        part, total, ended = self._tier._part_bytes, 0, False
        while not ended:
            async with self._tier._parts:
                pending: list[bytes | bytearray] = []
                size = 0
                while size < part and not ended:
                    chunk = await anext(chunks, None)
                    ended = chunk is None
                    if chunk is not None:
                        pending.append(chunk)
                        size += len(chunk)
                total += size
                data = b"".join(pending)
                del pending
                if ended and self._id is None:  # a part's worth at most: one plain PUT
                    await self._bucket.put(self._name, data, if_absent=True)
                elif data or not self._etags:
                    await self._send(data)
            if len(self._etags) + 1 >= _MAX_PARTS:
                part *= 2  # S3's part count: larger parts for the rest
        if self._id is not None:
            await self._bucket.complete_upload(self._name, self._id, self._etags)
        self._tier.counts.uploads += 1
        self._tier.counts.upload_bytes += total
        log.info("tier uploaded %s", fields(digest=self._digest, bytes=total))
        return True

    async def _send(self, data: bytes) -> None:
        if self._id is None:
            self._id = await self._bucket.start_upload(self._name)
        number = len(self._etags) + 1
        self._etags.append(await self._bucket.upload_part(self._name, self._id, number, data))
