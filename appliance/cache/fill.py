"""Single-flight fills: one upstream fetch per digest, streamed to every client at once.

The first request for a missing digest becomes the leader: its upstream response is
written to a temp file while the digest is computed. Followers — and the leader's own
client — read the same file as it grows, so each gets bytes within about one upstream
round trip. The last byte is released only after the digest and length have been
verified, so a corrupt body never reaches a client as a complete response. The fill runs
in its own task: a client that disconnects does not stop it.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import logging
import os
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass

from appliance.cache.ports import BlobFiles, SpaceKeeper, TempFile, Unbounded, UpstreamReply
from appliance.cache.reading import CHUNK_BYTES, read_at
from appliance.kit.logfields import fields
from appliance.kit.logthrottle import LogThrottle
from appliance.kit.tasks import to_thread_to_end
from appliance.oci.digest import Digest, DigestVerifier

log = logging.getLogger(__name__)
_bound_log = LogThrottle(log, interval_s=60.0)


_INLINE_BYTES = 64 << 10  # hashed and written on the loop: ~60 us, less than a thread hop
_GATHER_BYTES = CHUNK_BYTES  # what a reader waits to collect from a slow upstream...
_GATHER_S = 0.01  # ...for at most this long
_HOLD_STEP = 8 << 20  # room held at a time for a body of unknown length


class FillState(enum.Enum):
    FILLING = "filling"
    VERIFIED = "verified"  # every byte in and checked; being committed
    DONE = "done"
    FAILED = "failed"
    PASSED = "passed"  # no room (disk full, store at its bound): streamed through, not kept


NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
_FIRST_READER_WAIT_S = 10.0


@dataclass(slots=True, eq=False)  # readers are kept in a set: by identity
class _Reader:
    pos: int
    stop: int


class FillFailed(RuntimeError):
    """The upstream body was cut short or did not match its digest or length."""


class NotKept(FillFailed):
    """The fill streams through uncached (no room): an answer that needs the verified,
    stored copy cannot have it now; asked again, it may."""


class TooManyFills(RuntimeError):
    """More upstream transfers at once than the configured bound: ask again shortly."""


class LeaderGotNoBody(RuntimeError):
    """The leader's upstream answer was not a body (e.g. 401): followers ask themselves."""


class Fill:
    def __init__(
        self,
        digest: Digest,
        size: int | None,
        media_type: str | None,
        temp: TempFile,
        space: SpaceKeeper | None = None,
    ) -> None:
        self.digest = digest
        self.size = size
        """Expected length from upstream's Content-Length, when it sent one."""
        self.media_type = media_type
        self.written = 0
        self.state = FillState.FILLING
        self.error: BaseException | None = None
        self._temp = temp
        self._space = space or Unbounded()
        self._held = 0
        """Bytes held under the store's bound for this body (see `_hold_room`)."""
        self._final: str | None = None
        self._changed = asyncio.Event()
        # Pass-through (no room; `_not_kept` says why): bytes [on_disk, …) are not in the
        # file; the current chunk is held in `window` until every reader has taken it.
        self.on_disk: int | None = None
        self._not_kept = ""
        self._window: tuple[int, bytes] = (0, b"")
        self._readers: set[_Reader] = set()
        self._had_readers = False
        self.started = time.monotonic()
        self.ended = False
        """`run` has returned: committed and indexed, or failed, or passed through."""
        self._on_verified: list[Callable[[], None]] = []

    def when_verified(self, callback: Callable[[], None]) -> None:
        """Call `callback` once every byte is in and matches the digest (now, if so)."""
        if self.state in (FillState.VERIFIED, FillState.DONE, FillState.PASSED):
            callback()
        elif self.state is FillState.FILLING:
            self._on_verified.append(callback)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    @property
    def passing(self) -> bool:
        """No room (the disk filled, or the store is at its bound): readers that have
        joined get the bytes, nobody else joins."""
        return self.on_disk is not None

    async def run(
        self,
        reply: UpstreamReply,
        files: BlobFiles,
        on_commit: Callable[[Fill], Awaitable[None]],
        on_disk_full: Callable[[Fill | None, OSError], None] = lambda _f, _e: None,
    ) -> None:
        """Take the body in, verify it, then commit it (or, after the disk filled, let
        the readers finish); a failure is kept in `error` for the readers."""
        try:
            verifier = self.digest.verifier()
            async for chunk in reply.chunks():
                await self._take_in(chunk, verifier, on_disk_full)
            self._verify(verifier)
            if self.on_disk is not None:
                await self._wait_for_readers(last=True)
                self.state = FillState.PASSED
                files.discard(self._temp)
                log.info("fill passed-through digest=%s bytes=%d", self.digest, self.written)
                return
            await self._commit(files, on_commit)
        except BaseException as e:
            # Failed first, then clean up: readers and joiners hear of it even if the
            # clean-up fails too.
            self.state = FillState.FAILED
            self._on_verified.clear()
            self.error = e
            log.warning("fill failed digest=%s bytes=%d error=%s", self.digest, self.written,
                        str(e) or type(e).__name__)  # fmt: skip
            if self._final is None:
                self._discard(files)
            if not isinstance(e, Exception):
                raise
        finally:
            reply.close()
            self._window = (0, b"")  # a finished fill stays joinable a while: not its chunk
            self.ended = True
            self._space.release(self._held)  # indexed by now, or gone
            self._held = 0
            self._notify()

    async def _take_in(
        self,
        chunk: bytes,
        verifier: DigestVerifier,
        on_disk_full: Callable[[Fill | None, OSError], None],
    ) -> None:
        """One chunk of the body: into the file and the hash, and to the readers."""
        if self.on_disk is None and self.written + len(chunk) > self._held:
            await self._hold_room(len(chunk))
        if self.on_disk is None:
            try:
                # Disk write and hash off the event loop (both release the GIL), so the
                # loop keeps moving TLS bytes to clients meanwhile (a cancelled fill waits
                # for the write); a small chunk (a slow upstream's) costs less than a hop.
                if len(chunk) > _INLINE_BYTES:
                    await to_thread_to_end(_absorb, self._temp, verifier, chunk)
                else:
                    _absorb(self._temp, verifier, chunk)
            except OSError as e:
                if e.errno not in NO_SPACE:
                    raise
                self._stop_writing(f"the store's disk is full ({e.strerror or e})")
                on_disk_full(self, e)
        if self.on_disk is not None:
            verifier.update(chunk)
        # Readers keeping up take the newest chunk from here, not from the file; passing
        # through a body of unknown length, with the byte held back (`_readable_until`)
        # of the chunk before, which is in memory only.
        held = self.size is None and self.on_disk is not None and self.written > self.on_disk
        tail = self._window[1][-1:] if held else b""
        self._window = (self.written - len(tail), tail + chunk)
        self.written += len(chunk)
        if self.size is not None and self.written > self.size:
            raise FillFailed(f"{self.digest}: upstream sent more than {self.size} bytes")
        self._notify()
        if self.on_disk is not None:
            await self._wait_for_readers()

    async def _hold_room(self, coming: int) -> None:
        """Room under the store's bound before the bytes go to disk: the whole body at
        once when its length is known, else a step at a time. None to be had: the fill
        streams through to its readers uncached, as on a full disk."""
        rest = _HOLD_STEP if self.size is None else self.size - self._held
        want = max(self.written + coming - self._held, rest)
        if await self._space.hold(want):
            self._held += want
            return
        self._stop_writing("the store is at its bound, store.max_size")
        _bound_log.warning(
            "bound",
            "store over-bound %s",
            fields(digest=self.digest, bytes=want, action="streaming-through-uncached"),
        )

    def _stop_writing(self, cause: str) -> None:
        """Pass-through from here. The room held for bytes that will not be written goes
        back now, not when the slowest reader is done (eviction would free stored content
        for it, other fills would wait for it); what is on disk stays held until it goes."""
        self.on_disk = self.written
        self._not_kept = f"{self.digest} is not kept: {cause}"
        if self._held > self.written:
            self._space.release(self._held - self.written)
            self._held = self.written

    def _verify(self, verifier: DigestVerifier) -> None:
        """The whole body is in: it must be as long as announced and hash to the digest."""
        if self.size is not None and self.written != self.size:
            raise FillFailed(
                f"{self.digest}: upstream body ended at {self.written} of {self.size} bytes"
            )
        if not verifier.matches():
            raise FillFailed(f"{self.digest}: upstream body hashes to {verifier.actual()}")
        self.size = self.written
        self.state = FillState.VERIFIED
        self._notify()
        for callback in self._on_verified:
            callback()
        self._on_verified.clear()

    def _discard(self, files: BlobFiles) -> None:
        try:
            files.discard(self._temp)
        except OSError as e:  # removed at the next start (`FileBlobStore.prepare`)
            log.warning("fill temp-not-removed digest=%s error=%s", self.digest, e)

    async def _commit(self, files: BlobFiles, on_commit: Callable[[Fill], Awaitable[None]]) -> None:
        try:
            self._final = str(await files.commit(self._temp, self.digest))
        except OSError as e:  # fsync, rename: EIO, ENOSPC… the bytes were right, not kept
            raise FillFailed(f"{self.digest}: verified but could not be stored: {e}") from e
        self.state = FillState.DONE
        try:
            await on_commit(self)
        except Exception as e:  # noqa: BLE001 - the verified file stays; reconciled at start
            log.warning("fill index-write-failed digest=%s error=%s", self.digest, e)
        seconds = time.monotonic() - self.started
        log.info(
            "fill committed %s",
            fields(digest=self.digest, bytes=self.written, s=f"{seconds:.3f}"),
        )

    async def _wait_for_readers(self, *, last: bool = False) -> None:
        """Pass-through: until every reader has taken what is readable of the window, so
        it can be replaced (`last`: the final bytes, after which readers may all be gone).
        Memory stays at one chunk; the slowest reader sets the pace."""
        deadline = time.monotonic() + _FIRST_READER_WAIT_S
        while True:
            if last and self._had_readers and not self._readers:
                return
            if not self._readers and (self._had_readers or time.monotonic() > deadline):
                raise FillFailed(f"{self._not_kept}, and no client is left to stream it to")
            until = self._readable_until()
            if self._readers and all(min(r.stop, until) <= r.pos for r in self._readers):
                return
            try:
                async with asyncio.timeout(None if self._readers else 1.0):
                    await self._changed.wait()
            except TimeoutError:
                pass

    def _readable_until(self) -> int:
        if self.state in (FillState.VERIFIED, FillState.DONE):
            return self.written
        # Hold back the last byte until the digest is verified.
        last = self.size if self.size is not None else self.written
        return min(self.written, last - 1)

    async def wait_stored(self) -> None:
        """Until every byte is in, verified and committed; FillFailed if the fill fails,
        NotKept as soon as it streams through uncached. For answers that must not start
        before that: a pass-through keeps one chunk, none can wait for its verdict."""
        while not self.ended and self.on_disk is None:
            await self._changed.wait()
        if self.on_disk is not None:
            raise NotKept(self._not_kept)
        if self.state is not FillState.DONE:
            raise FillFailed(str(self.error))

    async def _open(self) -> int:
        while True:
            self._raise_if_failed()
            if self.state is FillState.PASSED:
                raise NotKept(self._not_kept)
            if self.state is FillState.FILLING or self.on_disk is not None:
                return os.open(self._temp.path, os.O_RDONLY | os.O_CLOEXEC)
            if self.state is FillState.DONE and self._final is not None:
                return os.open(self._final, os.O_RDONLY | os.O_CLOEXEC)
            await self._changed.wait()  # being renamed into place: open it there

    async def opened(
        self, start: int, stop: int, take: int = CHUNK_BYTES
    ) -> AsyncGenerator[bytes | bytearray, None]:
        """`stream`, its file open already, for an answer that must know before its status
        line: FileNotFoundError here if the file was evicted after the commit (a finished
        fill stays joinable a while: `Fills`), FillFailed if it failed or is not kept.
        Read it to its end or close it (`aclose`): it counts as a reader from now on."""
        chunks = self.stream(start, stop, take, primed=True)
        await anext(chunks)  # b"": the file is open
        return chunks

    async def stream(
        self, start: int, stop: int, take: int = CHUNK_BYTES, *, primed: bool = False
    ) -> AsyncGenerator[bytes | bytearray, None]:
        """Bytes [start, stop) as they arrive, at most `take` at a time; FillFailed if the
        fill fails meanwhile. `primed`: an empty chunk first, once the file is open."""
        fd = await self._open()
        reader = _Reader(start, stop)
        self._readers.add(reader)
        self._had_readers = True
        try:
            if primed:
                yield b""
            while reader.pos < (stop if self.size is None else min(stop, self.size)):
                self._raise_if_failed()
                if self.on_disk is None:
                    await self._gather(reader.pos, stop)
                limit = min(self._readable_until(), stop)
                chunk = await self._take(fd, reader.pos, limit, take)
                if chunk:
                    reader.pos += len(chunk)
                    if self.on_disk is not None:
                        self._notify()  # a pass-through fill waits for its slowest reader
                    yield chunk
                else:
                    self._raise_if_failed()  # it may have failed while this reader gathered
                    await self._changed.wait()
        finally:
            self._readers.discard(reader)
            self._notify()
            os.close(fd)

    def _raise_if_failed(self) -> None:
        if self.state is FillState.FAILED:
            raise FillFailed(str(self.error))

    async def _gather(self, pos: int, stop: int) -> None:
        """A slow upstream arrives a TLS record at a time: let up to `_GATHER_BYTES`
        collect for at most `_GATHER_S` rather than send (and wake for) each piece."""
        deadline = asyncio.get_running_loop().time() + _GATHER_S
        while (
            self.state is FillState.FILLING
            and min(self._readable_until(), stop) - pos < _GATHER_BYTES
            and self.written < (self.size if self.size is not None else stop)
        ):
            try:
                async with asyncio.timeout_at(deadline):
                    await self._changed.wait()
            except TimeoutError:
                return

    async def _take(self, fd: int, pos: int, limit: int, take: int) -> bytes | bytearray:
        """Bytes from `pos` up to `limit` available now: from the newest chunk in memory
        (the pass-through window, or a reader keeping up), else from the file; b"" when
        the reader must wait."""
        if pos >= limit:
            return b""
        offset, data = self._window
        if offset <= pos < offset + len(data):
            return data[pos - offset : min(limit - offset, pos - offset + take)]
        if self.on_disk is None or pos < self.on_disk:
            end = limit if self.on_disk is None else min(limit, self.on_disk)
            chunk = await read_at(fd, min(end - pos, take), pos)
            if not chunk:
                raise FillFailed(f"{self.digest}: file shorter than written")
            return chunk
        if pos < offset:
            raise FillFailed(f"{self.digest}: bytes {pos}..{offset} went past unread")
        return data[pos - offset : limit - offset]


def _absorb(temp: TempFile, verifier: DigestVerifier, chunk: bytes) -> None:
    temp.write(chunk)
    verifier.update(chunk)
