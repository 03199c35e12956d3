"""What is pushed through regcache, kept on its way upstream (write-through, issue #17).

A blob upload's bytes — a monolithic `POST ?digest=`, or `POST`, `PATCH`es and the
closing `PUT ?digest=` — are teed into a temp file and hashed while they stream to
upstream; the blob is committed to the store only when upstream answered the closing
request 201 with that very digest and the bytes hash to it. A manifest `PUT` upstream
accepted (201, its digest checked against the bytes) is stored byte-exact. What was
pushed is the pusher's in that repository (the access gate's grant); anyone else gets it
as for any stored content: when upstream says so.

Nothing here may fail a push: a tee that cannot write (a full disk), a PATCH out of
order or a session not known (another gateway, a restart) only means the blob is not
kept. Sessions live on the cache's loop, bounded in number and age; an abandoned one's
temp file is removed when it is dropped (and by reconciliation at start).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from appliance.cache.access import AccessGate
from appliance.cache.ports import BlobFiles, Index, TempFile
from appliance.cache.shelf import Shelf
from appliance.kit.logfields import fields
from appliance.kit.tasks import to_thread_to_end
from appliance.oci.digest import Digest

log = logging.getLogger(__name__)

MAX_SESSIONS = 1024
SESSION_TTL_S = 3600.0
MAX_MANIFEST_BYTES = 4 << 20
_INLINE_BYTES = 64 << 10


KeepManifest = Callable[[tuple[str, str], Digest, bytes, str], Awaitable[object]]


@dataclass(slots=True)
class Upload:
    """One blob upload's bytes so far, as regcache saw them pass."""

    temp: TempFile | None
    hasher: Any = field(default_factory=hashlib.sha256)
    size: int = 0
    broken: str | None = None
    """Why it will not be kept (a write failed, bytes were skipped, a step failed)."""
    touched_s: float = 0.0


class Uploads:
    def __init__(
        self,
        files: BlobFiles,
        index: Index,
        gate: AccessGate,
        shelf: Shelf,
        keep_manifest: KeepManifest,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._files = files
        self._keep_manifest = keep_manifest
        """Stores a verified manifest (`Manifests.keep`)."""
        self._index = index
        self._gate = gate
        self._shelf = shelf
        self._clock = clock
        self._sessions: dict[tuple[str, str, str], Upload] = {}
        self.kept = 0
        """Blobs committed from pushes (for tests and the log)."""

    def begin(self) -> Upload:
        """A new upload (a POST): not a session until upstream names it (`register`)."""
        try:
            temp: TempFile | None = self._files.create_temp()
            broken = None
        except OSError as e:
            temp, broken = None, f"no temp file: {e}"
        return Upload(temp, broken=broken, touched_s=self._clock())

    def session(self, host: str, repository: str, uuid: str) -> Upload | None:
        self._expire()
        return self._sessions.get((host, repository, uuid))

    def register(self, host: str, repository: str, uuid: str, upload: Upload) -> None:
        """Upstream answered 202 naming the upload `uuid`: later steps continue it."""
        self._expire()
        if len(self._sessions) >= MAX_SESSIONS:
            self.drop(self._sessions.pop(next(iter(self._sessions))))
        upload.touched_s = self._clock()
        self._sessions[(host, repository, uuid)] = upload

    def forget(self, host: str, repository: str, uuid: str, *, keep_file: bool = False) -> None:
        """The session `uuid` ends (its file removed, unless the caller finishes it)."""
        upload = self._sessions.pop((host, repository, uuid), None)
        if upload is not None and not keep_file:
            self.drop(upload)

    async def tee(self, upload: Upload, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """`chunks` unchanged, each also written to the upload's file and hashed."""
        async for chunk in chunks:
            if upload.broken is None and upload.temp is not None:
                try:
                    if len(chunk) > _INLINE_BYTES:
                        await to_thread_to_end(_absorb, upload, chunk)
                    else:
                        _absorb(upload, chunk)
                except OSError as e:
                    upload.broken = f"tee write failed: {e}"
            yield chunk

    async def finish(
        self, upload: Upload, digest: Digest, place: tuple[str, str], authorization: str | None
    ) -> bool:
        """Upstream accepted the blob as `digest`: kept if the bytes that passed are it."""
        try:
            if upload.temp is None:
                upload.broken = upload.broken or "no temp file"
            if upload.broken is not None or upload.temp is None:
                return False
            actual = Digest("sha256", upload.hasher.hexdigest())
            if actual != digest:
                upload.broken = f"the bytes that passed hash to {actual}"
                return False
            temp, upload.temp = upload.temp, None
            try:
                await self._files.commit(temp, digest)
            except OSError as e:
                self._files.discard(temp)
                upload.broken = f"commit failed: {e}"
                return False
            await self._shelf.record("pushed blob", self._index.add_blob(digest, upload.size, None))
            self._shelf.added(upload.size)
            self._gate.grant(place[0], place[1], digest, authorization)
            self.kept += 1
            log.info("push kept %s", fields(digest=digest, bytes=upload.size, registry=place[0],
                                            repository=place[1]))  # fmt: skip
            return True
        finally:
            if upload.broken is not None:
                log.info("push not-kept %s", fields(digest=digest, reason=upload.broken))
            self.drop(upload)

    async def manifest(
        self,
        place: tuple[str, str],
        digest: Digest,
        body: bytes,
        media_type: str,
        authorization: str | None,
    ) -> bool:
        """A manifest upstream accepted as `digest`: stored byte-exact if it is."""
        if Digest.of(body, digest.algorithm) != digest:
            return False
        self._gate.grant(place[0], place[1], digest, authorization, body, media_type)
        if await self._shelf.stored_manifest(digest) is None:
            await self._keep_manifest(place, digest, body, media_type)
        return True

    def drop(self, upload: Upload) -> None:
        if upload.temp is not None:
            self._files.discard(upload.temp)
            upload.temp = None

    def _expire(self) -> None:
        stale = self._clock() - SESSION_TTL_S
        for key in [k for k, u in self._sessions.items() if u.touched_s < stale]:
            self.drop(self._sessions.pop(key))


def _absorb(upload: Upload, chunk: bytes) -> None:
    assert upload.temp is not None
    upload.temp.write(chunk)
    upload.hasher.update(chunk)
    upload.size += len(chunk)
