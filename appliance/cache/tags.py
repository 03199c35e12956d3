"""Tags: answered from the store within their TTL for a client already vouched for,
else revalidated with an upstream HEAD (free on Docker Hub; a client HEAD becomes an
upstream GET only when upstream's HEAD does not say the digest, length and type a HEAD
answer must carry), and answered from their last mapping while upstream is in trouble
(stale-if-error, up to `max_stale_s`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import replace

from appliance.cache.access import AccessGate
from appliance.cache.answers import Answer, Described, Relayed, Stored, Target
from appliance.cache.calls import ClientCalls
from appliance.cache.manifests import Manifests
from appliance.cache.ports import Index, TagRow, UpstreamReply, UpstreamUnavailable, in_trouble
from appliance.cache.shelf import Shelf
from appliance.kit.bounded import BoundedMap
from appliance.kit.logfields import fields
from appliance.kit.logthrottle import LogThrottle
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import accept_key, accepts
from appliance.oci.routes import Kind

log = logging.getLogger(__name__)
_WRITTEN_REPOSITORIES = 4096


class Freshness:
    """Whether a tag's mapping may answer without asking upstream: within the registry's
    `tag_ttl_s`, and validated after the last write to its repository through regcache
    (a push moves tags: push, then pull, must see the push). Safe from any thread."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self._written: BoundedMap[tuple[str, str], float] = BoundedMap(_WRITTEN_REPOSITORIES)

    def fresh(self, target: Target, row: TagRow) -> bool:
        if self.clock() - row.validated_s >= target.tag_ttl_s:
            return False
        written = self._written.get((target.host, target.repository))
        return written is None or row.validated_s > written

    def written(self, places: Iterable[tuple[str, str]]) -> None:
        """(host, repository) places a client just wrote to (on the cache's loop)."""
        now = self.clock()
        for place in places:
            self._written.set(place, now)


class Tags:
    def __init__(
        self,
        shelf: Shelf,
        index: Index,
        calls: ClientCalls,
        gate: AccessGate,
        manifests: Manifests,
        freshness: Freshness,
    ) -> None:
        self._shelf = shelf
        self._index = index
        self._calls = calls
        self._gate = gate
        self._manifests = manifests
        self._freshness = freshness
        self._clock = freshness.clock
        self._stale_log = LogThrottle(log, interval_s=3600.0)

    async def resolve(self, target: Target, tag: str, *, head: bool) -> Answer:
        now = self._clock()
        fresh = await self._fresh(target, tag)
        if fresh is not None:
            return fresh
        try:
            reply = await self._calls.fetch(target, "HEAD", Kind.MANIFEST, tag)
        except UpstreamUnavailable as e:
            stale = await self._stale(target, tag, now, str(e))
            if stale is None:
                raise
            return stale
        realm_down = reply.status == 401 and target.realm_down
        if in_trouble(reply.status) or realm_down:
            stale = await self._stale(target, tag, now, f"HEAD answered {reply.status}")
            if stale is not None:
                reply.close()
                return stale
        if realm_down:  # a 401 would send the client to a token step that cannot work
            reply.close()
            raise UpstreamUnavailable(f"{target.host}: its token realm did not answer")
        if reply.status == 200 and (digest := reply.digest) is not None:
            return await self._resolved(target, tag, reply, digest, now, head=head)
        if head and reply.status != 200:
            return Relayed(reply)
        reply.close()
        # No usable HEAD (an auth challenge, an error, no digest): the GET tells the
        # client; for a client HEAD, what to describe (the stored manifest).
        return await self._tagged(target, tag, await self._manifests.fetch(target, tag), now)

    async def _fresh(self, target: Target, tag: str) -> Stored | None:
        """The tag's mapping within its TTL, only for a client already vouched for: any
        other is asked about the tag itself, as it would be for a tag not held."""
        key = accept_key(target.accept)
        row = await self._index.tag(target.host, target.repository, tag, key)
        if row is None or not self._freshness.fresh(target, row):
            return None
        stored = await self._shelf.stored_manifest(row.digest)
        vouched = self._gate.vouches(
            target.host, target.repository, row.digest, target.authorization
        )
        if vouched and stored is not None and accepts(target.accept, stored.media_type):
            return stored
        return None

    async def _resolved(
        self,
        target: Target,
        tag: str,
        reply: UpstreamReply,
        digest: Digest,
        now: float,
        *,
        head: bool,
    ) -> Answer:
        """Upstream named the tag's digest: the stored manifest, or what it would be.
        A HEAD answer describes it only with upstream's length and type: containerd
        takes a HEAD's Content-Length as the manifest's size, so without one the
        manifest is fetched (and stored) to learn it; it is never guessed."""
        size, media_type = reply.length, reply.content_type
        reply.close()
        # Upstream just resolved the tag for this client: the digest is theirs here.
        self._gate.grant(target.host, target.repository, digest, target.authorization)
        accept = ", ".join(v for k, v in target.headers.items() if k.lower() == "accept")
        url = target.url(Kind.MANIFEST, tag)
        self._gate.learn_public_soon(target.host, target.repository, url, digest, accept)
        stored = await self._shelf.stored_manifest(digest)
        if stored is not None and accepts(target.accept, stored.media_type):
            await self._record(target, tag, stored, now)
            return stored
        if head and size is not None and media_type:
            return Described(digest, size, media_type)
        answer = await self._manifests.fetch(target, digest)
        return await self._tagged(target, tag, answer, now)

    async def _tagged(self, target: Target, tag: str, answer: Answer, now: float) -> Answer:
        """Record the tag → the manifest just stored (other answers pass unchanged), as
        validated when it was asked (`now`): a push landing meanwhile is after it."""
        if isinstance(answer, Stored):
            await self._record(target, tag, answer, now)
        return answer

    async def _record(self, target: Target, tag: str, stored: Stored, now: float) -> None:
        row = TagRow(stored.digest, stored.media_type, stored.size, now)
        key = accept_key(target.accept)
        write = self._index.set_tag(target.host, target.repository, tag, key, row)
        await self._shelf.record("tag", write)

    async def _stale(self, target: Target, tag: str, now: float, why: str) -> Stored | None:
        """The tag's last validated manifest this client accepts, if upstream being down
        allows it (whatever Accept set it was first fetched for)."""
        for row in await self._index.tag_rows(target.host, target.repository, tag):
            if now - row.validated_s > target.max_stale_s:
                break
            stored = await self._shelf.stored_manifest(row.digest)
            if stored is None or not accepts(target.accept, stored.media_type):
                continue
            self._stale_log.warning(
                f"{target.host}/{target.repository}",
                "tag serving-stale %s",
                fields(
                    host=target.host,
                    repository=target.repository,
                    age_s=int(now - row.validated_s),
                    reason=why,
                ),
            )
            return replace(stored, stale=True)
        return None
