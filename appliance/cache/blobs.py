"""Blob answers: from the store when whole there, else over one fill per digest shared
by every client that asks meanwhile (see fill.py), each of them let through the gate."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from appliance.cache.access import AccessGate
from appliance.cache.answers import (
    Answer,
    Described,
    Filling,
    Redirected,
    Stored,
    Target,
    refusal_or_relayed,
)
from appliance.cache.calls import ClientCalls
from appliance.cache.fill import Fill
from appliance.cache.fills import Fills
from appliance.cache.ports import (
    Index,
    Peers,
    SharedTier,
    UpstreamReply,
    UpstreamUnavailable,
    in_trouble,
)
from appliance.cache.shelf import Shelf
from appliance.kit.logfields import fields
from appliance.kit.logthrottle import LogThrottle
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import OCTET_STREAM
from appliance.oci.routes import Kind

log = logging.getLogger(__name__)
_relay_log = LogThrottle(log, interval_s=60.0)


class BlobRefused(RuntimeError):
    """Upstream answered a blob GET with something other than its bytes."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class Blobs:
    def __init__(
        self,
        shelf: Shelf,
        index: Index,
        calls: ClientCalls,
        gate: AccessGate,
        fills: Fills,
        peers: Peers | None = None,
        shared: SharedTier | None = None,
    ) -> None:
        self._shelf = shelf
        self._index = index
        self._calls = calls
        self._gate = gate
        self._fills = fills
        self._peers = peers
        self._shared = shared
        """Asked where the client may fetch a blob itself (`store.s3.redirect`)."""

    async def blob(self, target: Target, digest: Digest, *, head: bool) -> Answer:
        stored = await self._shelf.stored(digest, OCTET_STREAM)
        if stored is not None:
            answer = await self._calls.gated(target, stored, stored.size, Kind.BLOB)
            if isinstance(answer, Stored):  # only now: nothing is recorded for a refusal
                self._index.touch(digest)
            return answer
        if head:
            return await self._describe(target, digest)
        if self._shared is not None and (found := await self._shared.location(digest)):
            location, size = found
            answer = await self._calls.gated(target, Redirected(digest, size, location), size,
                                             Kind.BLOB)  # fmt: skip
            if isinstance(answer, Redirected):
                self._shared.redirected()
            return answer
        led = False
        # A peer's relay is never relayed again: views of who is up may differ a moment.
        owner = None if self._peers is None or target.from_peer else self._peers.owner(digest)

        async def fetch() -> UpstreamReply:
            nonlocal led
            led = True
            return await self._calls.fetch(target, "GET", Kind.BLOB, digest)

        async def relay() -> UpstreamReply | None:
            nonlocal led
            assert owner is not None
            reply = await self._relayed(owner, target, digest)
            # Only the owner's own answer to this request needs no gate: when it could
            # not answer, the bytes may come from the bucket, which must be gated.
            led = reply is not None
            return reply

        result = await self._fills.join_or_start(
            digest, fetch, None, relay=None if owner is None else relay
        )
        if not isinstance(result, Fill):
            return await refusal_or_relayed(result)
        filling = Filling(digest, OCTET_STREAM, result)
        if not led:  # another client's fill: this one must be entitled to it too
            return await self._calls.gated(target, filling, result.size, Kind.BLOB)
        # Upstream's answer to this very request: it needs no gate. Once its bytes check
        # out, the digest is this client's through this repository.
        result.when_verified(
            lambda: self._gate.grant(target.host, target.repository, digest, target.authorization)
        )
        return filling

    async def _relayed(self, owner: str, target: Target, digest: Digest) -> UpstreamReply | None:
        """The owner's answer to this client's request: its bytes as it fills them (its
        gate, or upstream with these credentials, let them through), or its refusal.
        None when it could not answer (down, or in trouble): then this gateway fills."""
        assert self._peers is not None
        try:
            reply = await self._peers.relay(owner, target.url(Kind.BLOB, digest), target.headers)
        except UpstreamUnavailable as e:
            _relay_log.warning(owner, "peer relay-failed %s", fields(peer=owner, error=e))
            return None
        if in_trouble(reply.status):
            reply.close()
            return None
        return reply

    async def keep(self, digest: Digest, fetch: Callable[[], Awaitable[UpstreamReply]]) -> int:
        """`digest` in the store, for the managed mirror: there already, joined from a fill
        in flight, or fetched with `fetch`; the bytes this call fetched. FillFailed when
        it failed (NotKept: no room), BlobRefused when upstream said no."""
        if await self._shelf.stored(digest, OCTET_STREAM) is not None:
            return 0
        led = False

        async def leading() -> UpstreamReply:
            nonlocal led
            led = True
            return await fetch()

        result = await self._fills.join_or_start(digest, leading, media_type=None)
        if not isinstance(result, Fill):
            status = result.status
            result.close()
            raise BlobRefused(f"{digest}: upstream answered {status}", status)
        await result.wait_stored()
        return result.written if led else 0

    async def _describe(self, target: Target, digest: Digest) -> Answer:
        """A HEAD for a blob not stored: from a fill that knows its size, else upstream
        (never a GET)."""
        running = self._fills.active(digest)
        if running is not None and running.done() and not running.exception():
            fill = running.result()
            if fill.size is not None:
                described = Described(digest, fill.size, OCTET_STREAM)
                return await self._calls.gated(target, described, fill.size, Kind.BLOB)
        reply = await self._calls.fetch(target, "HEAD", Kind.BLOB, digest)
        return await refusal_or_relayed(reply)
