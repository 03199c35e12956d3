"""What is pushed through regcache, kept on its way upstream (write-through, issue #17).

A blob upload's bytes — a monolithic `POST ?digest=`, or `POST`, `PATCH`es and the
closing `PUT ?digest=` — are teed into a temp file and hashed while they stream to
upstream; the blob is committed to the store only when upstream answered the closing
request 201 with that very digest, the bytes hash to it, and the store does not hold it
already (a copy there is never replaced). A manifest `PUT` upstream accepted (201, its
digest checked against the bytes) is stored byte-exact. What was pushed is the pusher's
in that repository (the access gate's grant); anyone else gets it as for any stored
content: when upstream says so.

One request at a time owns an upload (`busy`): a second step arriving meanwhile (a
PATCH racing a PUT) marks it broken and feeds nothing, and only the owner ever closes
its file, so no write lands in a file another step closed or hashed. The bytes held on
disk count against the store's bound (room is held as they come, like a fill's); none
to be had: not kept. Nothing here may fail a push: any trouble (a full disk, a PATCH
out of order, an upload regcache did not see begin) only means nothing is kept.
Sessions live on the cache's loop, bounded in number and age.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from appliance.cache.access import AccessGate
from appliance.cache.ports import BlobFiles, Index, SpaceKeeper, TempFile, Unbounded
from appliance.cache.shelf import Shelf
from appliance.kit.logfields import fields
from appliance.kit.tasks import to_thread_to_end
from appliance.oci.digest import Digest

log = logging.getLogger(__name__)

MAX_SESSIONS = 1024
SESSION_TTL_S = 3600.0
MAX_MANIFEST_BYTES = 4 << 20
_INLINE_BYTES = 64 << 10
_HOLD_STEP = 64 << 20

KeepManifest = Callable[[tuple[str, str], Digest, bytes, str], Awaitable[object]]
TagPushed = Callable[[str, str, str, Digest], Awaitable[None]]
"""(host, repository, tag, digest) of a manifest pushed by tag that upstream accepted."""
Key = tuple[str, str, str]
"""(host, repository, upload uuid as upstream named it)."""


@dataclass(slots=True, eq=False)
class Upload:
    """One blob upload's bytes so far, as regcache saw them pass."""

    temp: TempFile | None
    hasher: Any = field(default_factory=hashlib.sha256)
    size: int = 0
    broken: str | None = None
    """Why it will not be kept (a write failed, bytes were skipped, a step failed)."""
    touched_s: float = 0.0
    busy: bool = True
    """A request (its owner) is feeding or settling it."""
    key: Key | None = None
    """Its session key while registered."""
    held: int = 0
    """Room held under the store's bound for its bytes."""
    writing: bool = False
    """A chunk is being written (in a worker thread, for a big one)."""


class Uploads:
    def __init__(
        self,
        files: BlobFiles,
        index: Index,
        gate: AccessGate,
        shelf: Shelf,
        keep_manifest: KeepManifest,
        space: SpaceKeeper | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._files = files
        self._index = index
        self._gate = gate
        self._shelf = shelf
        self._keep_manifest = keep_manifest
        """Stores a verified manifest (`Manifests.keep`)."""
        self._space = space or Unbounded()
        self._clock = clock
        self._sessions: OrderedDict[Key, Upload] = OrderedDict()
        self.kept = 0
        """Blobs committed from pushes (for tests and the log)."""
        self.on_tag_pushed: TagPushed | None = None
        """Told of each tag pushed, once its manifest is kept (the managed mirror serves a
        push to a tag it mirrors at once)."""

    def begin(self) -> Upload:
        """A new upload (a POST), owned by its request: not a session until upstream names
        it (`register`)."""
        try:
            return Upload(self._files.create_temp(), touched_s=self._clock())
        except OSError as e:
            return Upload(None, broken=f"no temp file: {e}", touched_s=self._clock())

    def claim(self, key: Key) -> Upload | None:
        """The session `key` for a request continuing it, or None: unknown, or another
        request has it now (then it is broken: two steps at once are not one upload)."""
        self._expire()
        upload = self._sessions.get(key)
        if upload is None:
            return None
        if upload.busy:
            upload.broken = "two requests fed it at once"
            return None
        upload.busy, upload.touched_s = True, self._clock()
        return upload

    def register(self, key: Key, upload: Upload) -> None:
        """Upstream answered 202 naming the upload: later steps continue it."""
        self._expire()
        if upload.key is not None and upload.key != key:
            self._sessions.pop(upload.key, None)  # upstream named it anew
        while len(self._sessions) >= MAX_SESSIONS and key not in self._sessions:
            idle = next((k for k, u in self._sessions.items() if not u.busy), None)
            if idle is None:
                upload.broken = "too many uploads at once"
                return
            self.forget(idle)
        upload.key = key
        upload.touched_s = self._clock()
        self._sessions[key] = upload
        self._sessions.move_to_end(key)

    def forget(self, key: Key) -> None:
        """The session `key` ends; its file goes now, or when its owner releases it."""
        upload = self._sessions.pop(key, None)
        if upload is None:
            return
        upload.key = None
        if upload.busy:
            upload.broken = upload.broken or "ended while in use"
        else:
            self._discard(upload)

    def release(self, upload: Upload) -> None:
        """Its owner's request is over: a session waits for the next step; anything else
        is gone (file and held room)."""
        upload.busy = False
        upload.touched_s = self._clock()
        if upload.key is None or upload.broken is not None:
            if upload.key is not None:
                self._sessions.pop(upload.key, None)
                upload.key = None
            self._discard(upload)

    async def tee(self, upload: Upload, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """`chunks` unchanged, each also written to the upload's file and hashed (by its
        owner, once at a time: the file it writes is the one it started with)."""
        temp = upload.temp
        async for chunk in chunks:
            if upload.broken is None and temp is not None and temp is upload.temp:
                upload.writing = True
                try:
                    await self._absorb(upload, temp, chunk)
                except Exception as e:  # noqa: BLE001 - never the push's trouble
                    upload.broken = f"tee failed: {type(e).__name__}: {e}"
                finally:
                    upload.writing = False
            yield chunk

    async def _absorb(self, upload: Upload, temp: TempFile, chunk: bytes) -> None:
        coming = upload.size + len(chunk)
        if coming > upload.held:
            want = max(coming - upload.held, _HOLD_STEP)
            if not await self._space.hold(want):
                upload.broken = "no room under the store's bound"
                return
            upload.held += want
        if len(chunk) > _INLINE_BYTES:
            await to_thread_to_end(_write, temp, upload, chunk)
        else:
            _write(temp, upload, chunk)

    async def finish(
        self, upload: Upload, digest: Digest, place: tuple[str, str], authorization: str | None
    ) -> bool:
        """Upstream accepted the blob as `digest` (the owner asks): kept if the bytes that
        passed are it, and granted to the pusher if they are, kept or already there."""
        if upload.key is not None:
            self._sessions.pop(upload.key, None)
            upload.key = None
        temp = upload.temp
        if upload.broken is None and upload.writing:
            upload.broken = "upstream answered before the body was through"
        actual = Digest("sha256", upload.hasher.hexdigest())
        if upload.broken is None and actual != digest:
            upload.broken = f"the bytes that passed hash to {actual}"
        if upload.broken is not None or temp is None:
            log.info("push not-kept %s", fields(digest=digest, reason=upload.broken))
            self._discard(upload)
            return False
        self._gate.grant(place[0], place[1], digest, authorization)
        if self._files.size_of(digest) is not None:
            self._discard(upload)  # the store's copy stays as it is
            return True
        upload.temp = None
        try:
            await self._files.commit(temp, digest)
        except OSError as e:
            self._files.discard(temp)
            log.info("push not-kept %s", fields(digest=digest, reason=f"commit failed: {e}"))
            self._discard(upload)
            return False
        await self._shelf.record("pushed blob", self._index.add_blob(digest, upload.size, None))
        self._discard(upload)  # the held room: counted as stored from now
        self._shelf.added(upload.size)
        self.kept += 1
        log.info("push kept %s", fields(digest=digest, bytes=upload.size, registry=place[0],
                                        repository=place[1]))  # fmt: skip
        return True

    async def manifest(
        self,
        place: tuple[str, str],
        digest: Digest,
        body: bytes,
        media_type: str,
        authorization: str | None,
        tag: str | None = None,
    ) -> bool:
        """A manifest upstream accepted as `digest` (pushed as `tag`, if by tag): stored
        byte-exact if it is."""
        if Digest.of(body, digest.algorithm) != digest:
            return False
        self._gate.grant(place[0], place[1], digest, authorization, body, media_type)
        if await self._shelf.stored_manifest(digest) is None:
            await self._keep_manifest(place, digest, body, media_type)
        if tag is not None and self.on_tag_pushed is not None:
            try:
                await self.on_tag_pushed(place[0], place[1], tag, digest)
            except Exception:  # never the push's trouble
                log.exception("push tag-hook-failed %s", fields(tag=tag, digest=digest))
        return True

    def _discard(self, upload: Upload) -> None:
        if upload.temp is not None:
            self._files.discard(upload.temp)
            upload.temp = None
        if upload.held:
            self._space.release(upload.held)
            upload.held = 0

    def _expire(self) -> None:
        stale = self._clock() - SESSION_TTL_S
        for key in [k for k, u in self._sessions.items() if u.touched_s < stale and not u.busy]:
            self.forget(key)


def _write(temp: TempFile, upload: Upload, chunk: bytes) -> None:
    temp.write(chunk)
    upload.hasher.update(chunk)
    upload.size += len(chunk)
