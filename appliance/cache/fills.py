"""The fills in flight, by digest: the first request for a missing blob leads a fill
(fill.py), later ones join it, and a finished fill stays joinable a little longer."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field

from appliance.cache.fill import (
    NO_SPACE,
    Fill,
    FillState,
    LeaderGotNoBody,
    NotKept,
    TooManyFills,
)
from appliance.cache.ports import (
    BlobFiles,
    Replica,
    Shared,
    SharedTier,
    SpaceKeeper,
    UpstreamReply,
)
from appliance.kit.tasks import spawn
from appliance.oci.digest import Digest

Relay = Callable[[], Awaitable[UpstreamReply | None]]
"""The owner's answer to the request, or None when it could not give one."""

_KEEP_FINISHED_S = 10.0
_ALL = 1 << 62  # a stream's end past any body: it ends with the fill


class Fills:
    """The fills in flight, by digest: a second request for a digest joins the first."""

    def __init__(
        self,
        files: BlobFiles,
        on_commit: Callable[[Fill], Awaitable[None]],
        max_running: int = 256,
        on_disk_full: Callable[[Fill | None, OSError], None] = lambda _f, _e: None,
        on_finished: Callable[[Fill, float], None] = lambda _f, _s: None,
        space: SpaceKeeper | None = None,
        shared: SharedTier | None = None,
    ) -> None:
        self._files = files
        self._shared = shared
        """Several gateways' tier: asked before upstream, given what upstream sends."""
        self._space = space
        """Holds room under the store's bound for each fill's body (none: unbounded)."""
        self._on_commit = on_commit
        self._on_finished = on_finished
        self.joined = 0
        """Requests that joined a fill another request started (coalesced)."""
        self._on_disk_full = on_disk_full
        self._active: dict[Digest, asyncio.Future[Fill]] = {}
        self._max_running = max_running
        self._running = 0

    def active(self, digest: Digest) -> asyncio.Future[Fill] | None:
        return self._active.get(digest)

    def running(self) -> set[str]:
        """Digests of fills in flight, until their row is written (a finished one kept
        joinable is not: its file is in the store like any other, and may be evicted;
        `join_or_start` then stops handing it out). Eviction must not choose a digest
        whose file is renamed into place but not yet indexed: the files it removes after
        the rows could be that new file."""
        return {
            str(digest)
            for digest, future in self._active.items()
            if not future.done() or (future.exception() is None and not future.result().ended)
        }

    async def join_or_start(
        self,
        digest: Digest,
        fetch: Callable[[], Awaitable[UpstreamReply]],
        media_type: str | None,
        *,
        relay: Relay | None = None,
    ) -> Fill | UpstreamReply:
        """The fill for `digest` (joined or started), or the leader's non-200 reply.
        `relay`: a peer owns `digest`; asked after the shared tier, before `fetch`."""
        for _ in range(3):
            running = self._active.get(digest)
            if running is None:
                return await self._lead(digest, fetch, media_type, relay)
            try:
                fill = await asyncio.shield(running)
            except LeaderGotNoBody:
                continue  # the leader's credentials or luck failed; try with ours
            if not fill.passing and not self._evicted(fill):
                self.joined += 1
                return fill
            # The disk filled under it, or its file was evicted since it committed.
            return await self._lead(digest, fetch, media_type, relay)
        return await self._lead(digest, fetch, media_type, relay)

    def _evicted(self, fill: Fill) -> bool:
        """A finished fill whose file is gone: eviction removed it (it is not busy once
        its row is written). Joined, it could only fail its reader."""
        return fill.state is FillState.DONE and self._files.size_of(fill.digest) is None

    async def _lead(
        self,
        digest: Digest,
        fetch: Callable[[], Awaitable[UpstreamReply]],
        media_type: str | None,
        relay: Relay | None,
    ) -> Fill | UpstreamReply:
        if self._running >= self._max_running:
            raise TooManyFills(f"{self._running} upstream transfers running; retry shortly")
        future: asyncio.Future[Fill] = asyncio.get_running_loop().create_future()
        self._active[digest] = future
        sources = _Sources(self._shared, fetch, relay)
        try:
            reply = await sources.reply(digest)
        except BaseException as e:
            # Followers must not inherit the leader's failure (or cancellation): they retry.
            error = LeaderGotNoBody(f"{type(e).__name__}: {e}")
            self._end(digest, future, error, sources.shared)
            raise
        shared = sources.shared
        if reply.status != 200:
            self._end(digest, future, LeaderGotNoBody(f"upstream answered {reply.status}"),
                      shared)  # fmt: skip
            return reply
        size = reply.length
        try:
            temp = self._files.create_temp()
        except OSError as e:
            if e.errno not in NO_SPACE:
                reply.close()
                raise
            # Not even an empty file fits: this client gets upstream's body as it is.
            self._end(digest, future, LeaderGotNoBody("disk full"), shared)
            self._on_disk_full(None, e)
            return reply
        fill = Fill(digest, size, media_type, temp, self._space)
        future.set_result(fill)
        self._running += 1
        task = spawn(
            fill.run(reply, self._files, self._on_commit, self._on_disk_full),
            name=f"fill {digest}",
        )
        # A finished fill stays joinable a little longer: a request that missed the store
        # moments before the commit would otherwise start a second upstream fetch.
        task.add_done_callback(lambda _t: self._finished(digest, future, fill, shared))
        if shared.replica is not None:
            spawn(_share(shared.replica, fill), name=f"share {digest}")
        return fill

    def _end(
        self, digest: Digest, future: asyncio.Future[Fill], error: BaseException, shared: Shared
    ) -> None:
        if shared.replica is not None:
            shared.replica.abandon()
        future.set_exception(error)
        future.exception()  # followers may be none: mark it retrieved
        self._forget(digest, future)

    def _finished(
        self, digest: Digest, future: asyncio.Future[Fill], fill: Fill, shared: Shared
    ) -> None:
        self._running -= 1
        whole = fill.size is not None and fill.written >= fill.size
        if shared.reply is not None and fill.state is FillState.FAILED and whole:
            assert self._shared is not None
            self._shared.distrust(digest)  # all of it came, and it did not check out
        self._on_finished(fill, time.monotonic() - fill.started)
        if fill.state is FillState.DONE:
            asyncio.get_running_loop().call_later(_KEEP_FINISHED_S, self._forget, digest, future)
        else:  # a failed fill must not be joined: the next request fetches afresh
            self._forget(digest, future)

    def _forget(self, digest: Digest, future: asyncio.Future[Fill]) -> None:
        if self._active.get(digest) is future:
            del self._active[digest]


@dataclass(slots=True)
class _Sources:
    """Where a leader's bytes come from, in turn: the shared tier; the peer that owns
    the digest (`relay`: then the tier is only looked at, as the owner shares it, unless
    the owner cannot answer); upstream (`fetch`)."""

    tier: SharedTier | None
    fetch: Callable[[], Awaitable[UpstreamReply]]
    relay: Relay | None
    shared: Shared = field(default_factory=lambda: Shared(None))

    async def reply(self, digest: Digest) -> UpstreamReply:
        if self.tier is not None:
            self.shared = await self.tier.find(digest, lead=self.relay is None)
        if self.shared.reply is not None:
            return self.shared.reply
        if self.relay is not None:
            relayed = await self.relay()
            if relayed is not None:
                return relayed
            if self.tier is not None:  # the owner could not answer: this gateway leads
                self.shared = await self.tier.find(digest)
                if self.shared.reply is not None:
                    return self.shared.reply
        return await self.fetch()


async def _share(replica: Replica, fill: Fill) -> None:
    """The fill's bytes for the shared tier, as they arrive, closed (no longer a reader of
    the fill) as soon as the tier stops taking them."""
    async with contextlib.aclosing(_kept(fill)) as body:
        await replica.write(body)


async def _kept(fill: Fill) -> AsyncGenerator[bytes | bytearray, None]:
    """NotKept as soon as the fill streams through uncached (no room here): then its file
    lacks the bytes, and the tier must not set the pace of the clients' pass-through."""
    async with contextlib.aclosing(fill.stream(0, _ALL)) as chunks:
        async for chunk in chunks:
            if fill.passing:
                raise NotKept(f"{fill.digest}: not kept here, so not shared either")
            yield chunk
