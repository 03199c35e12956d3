"""Blob uploads into the local registry: each a temp file hashed as its bytes arrive
(`POST`, `PATCH`es, the closing `PUT`), committed to the store only when the bytes hash
to the digest the client names. One request at a time feeds an upload (a second one
meanwhile is refused, not mixed in). Uploads not continued for `purge_after_s` are
abandoned and their bytes removed; so is the oldest idle one when too many are open."""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from appliance.cache.ports import BlobFiles, SpaceKeeper, TempFile, Unbounded
from appliance.kit.logfields import fields
from appliance.kit.tasks import to_thread_to_end
from appliance.local.ports import LocalError
from appliance.oci.digest import Digest

log = logging.getLogger(__name__)

_INLINE_BYTES = 64 << 10
_HOLD_STEP = 64 << 20


@dataclass(slots=True, eq=False)
class Session:
    """One upload's bytes so far."""

    name: str
    repository: str
    temp: TempFile
    started_s: float
    touched_s: float
    hasher: Any = field(default_factory=hashlib.sha256)
    size: int = 0
    busy: bool = False
    held: int = 0
    """Room held under the store's bound for its bytes."""
    closing: bool = False
    """Shutting down while a request feeds it: it ends when that request lets go."""


def unknown(name: str) -> LocalError:
    return LocalError(404, "BLOB_UPLOAD_UNKNOWN", f"upload {name[:64]!r} is not in progress")


class LocalUploads:
    def __init__(
        self,
        files: BlobFiles,
        *,
        purge_after_s: float,
        max_sessions: int,
        space: SpaceKeeper | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._files = files
        self.purge_after_s = purge_after_s
        self._max = max_sessions
        self._space = space or Unbounded()
        self._clock = clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def start(self, repository: str) -> Session:
        """A new upload, owned by the request that asked (`release` it)."""
        self.purge()
        while len(self._sessions) >= self._max:
            idle = next((s for s in self._sessions.values() if not s.busy), None)
            if idle is None:
                raise LocalError(429, "TOOMANYREQUESTS", "too many uploads in progress")
            self._end(idle, "too many uploads open: the oldest idle one gives way")
        try:
            temp = self._files.create_temp()
        except OSError as e:
            raise LocalError(507, "BLOB_UPLOAD_INVALID", f"no room for an upload: {e}") from e
        now = self._clock()
        session = Session(str(uuid.uuid4()), repository, temp, now, now, busy=True)
        self._sessions[session.name] = session
        return session

    def status(self, repository: str, name: str) -> Session:
        session = self._sessions.get(name)
        if session is None or session.repository != repository:
            raise unknown(name)
        return session

    def claim(self, repository: str, name: str) -> Session:
        """The upload for a request continuing it; 404 if unknown here, 409… if busy."""
        self.purge()
        session = self.status(repository, name)
        if session.busy:
            raise LocalError(409, "BLOB_UPLOAD_INVALID", "another request is writing this upload")
        session.busy, session.touched_s = True, self._clock()
        self._sessions.move_to_end(name)
        return session

    def release(self, session: Session) -> None:
        """Its request is over: the room held beyond its bytes goes back (an idle upload
        holds only what it wrote)."""
        session.busy = False
        session.touched_s = self._clock()
        if session.closing:
            self._end(session, "shut down")
        elif session.held > session.size:
            self._space.release(session.held - session.size)
            session.held = session.size

    def cancel(self, repository: str, name: str) -> None:
        self._end(self.claim(repository, name), "cancelled")

    def abandon(self, session: Session, why: str) -> None:
        """End an upload nobody can continue (its client never learnt its name)."""
        if session.name in self._sessions:
            self._end(session, why)

    async def feed(self, session: Session, chunks: AsyncIterator[bytes]) -> int:
        """Append the request's body; the upload's size after it."""
        async for chunk in chunks:
            coming = session.size + len(chunk)
            if coming > session.held:
                want = max(coming - session.held, _HOLD_STEP)
                if not await self._space.hold(want):
                    raise LocalError(507, "BLOB_UPLOAD_INVALID", "the store is full")
                session.held += want
            try:
                if len(chunk) > _INLINE_BYTES:
                    await to_thread_to_end(_write, session, chunk)
                else:
                    _write(session, chunk)
            except OSError as e:  # part of the chunk may be in the file: it cannot go on
                self._end(session, f"write failed: {e}")
                raise LocalError(507, "BLOB_UPLOAD_INVALID", f"writing the upload: {e}") from e
        return session.size

    async def commit(self, session: Session, digest: Digest) -> int:
        """The upload ends as `digest`: its file stored (unless the store has it already);
        its size. 400 DIGEST_INVALID if the bytes are something else (the upload ends)."""
        actual = Digest(digest.algorithm, _hexdigest(session, digest.algorithm))
        if session.temp.path.stat().st_size != session.size:  # what was hashed is the file
            self._end(session, "the file is not the bytes hashed")
            raise LocalError(500, "BLOB_UPLOAD_INVALID", "the upload was damaged; push again")
        if actual != digest:
            self._end(session, f"bytes hash to {actual}, not {digest}")
            raise LocalError(400, "DIGEST_INVALID", f"the uploaded bytes hash to {actual},"
                             f" not {digest}")  # fmt: skip
        self._sessions.pop(session.name, None)
        try:  # even over a stored copy: eviction, watching commits, then keeps the file
            await self._files.commit(session.temp, digest)
        except OSError as e:
            self._files.discard(session.temp)
            raise LocalError(507, "BLOB_UPLOAD_INVALID", f"storing the blob: {e}") from e
        finally:
            self._release_room(session)
        return session.size

    def purge(self) -> int:
        """Abandon uploads idle longer than the configured age; how many."""
        stale = self._clock() - self.purge_after_s
        old = [s for s in self._sessions.values() if s.touched_s < stale and not s.busy]
        for session in old:
            self._end(session, "abandoned")
        return len(old)

    def close(self) -> None:
        """Shutting down: idle uploads end now; one a request is feeding ends when it lets
        go (its file is not closed under a write)."""
        for session in list(self._sessions.values()):
            if session.busy:
                session.closing = True
            else:
                self._end(session, "shutting down")

    def _end(self, session: Session, why: str) -> None:
        self._sessions.pop(session.name, None)
        self._files.discard(session.temp)
        self._release_room(session)
        log.info("local upload-ended %s", fields(upload=session.name, repository=session.repository,
                                                 bytes=session.size, reason=why))  # fmt: skip

    def _release_room(self, session: Session) -> None:
        if session.held:
            self._space.release(session.held)
            session.held = 0


def _write(session: Session, chunk: bytes) -> None:
    session.temp.write(chunk)
    session.hasher.update(chunk)
    session.size += len(chunk)


def _hexdigest(session: Session, algorithm: str) -> str:
    if algorithm == "sha256":
        return str(session.hasher.hexdigest())
    return ""  # only sha256 is hashed as bytes arrive: anything else does not match
