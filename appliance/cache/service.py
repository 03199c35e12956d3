"""Registry semantics, the facade `proxy/` talks to: what to answer for a manifest or
blob request, and from where.

- By digest, from the store with no upstream call when present (blobs.py, manifests.py).
- Tags are revalidated cheaply and survive upstream trouble for a while (tags.py).
- Misses are fetched once per digest (fill.py, manifests.py) and verified before kept.
- Content from the store or another client's fetch passes the access gate (access.py).
- Hits that need no I/O are answered on other threads (hits.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from appliance.cache.access import AccessGate
from appliance.cache.answers import (
    Answer,
    Filling,
    Refused,
    Relayed,
    Stored,
    Target,
    refusal_or_relayed,
)
from appliance.cache.blobs import Blobs
from appliance.cache.calls import ClientCalls
from appliance.cache.children import Children
from appliance.cache.fill import Fill
from appliance.cache.fills import Fills
from appliance.cache.hits import Hits
from appliance.cache.manifests import Manifests
from appliance.cache.negative import NegativeCache
from appliance.cache.ports import (
    BlobFiles,
    Index,
    MirrorView,
    NoMirror,
    Peers,
    SharedTier,
    SpaceKeeper,
    Upstream,
    UpstreamReply,
)
from appliance.cache.referrers import Referrers
from appliance.cache.shelf import Shelf
from appliance.cache.tags import Freshness, Tags
from appliance.cache.uploads import Uploads
from appliance.kit.logfields import fields
from appliance.kit.logthrottle import LogThrottle
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import accepts
from appliance.oci.routes import Kind

log = logging.getLogger(__name__)


class RegistryCache:
    def __init__(
        self,
        files: BlobFiles,
        index: Index,
        upstream: Upstream,
        gate: AccessGate,
        negative: NegativeCache | None = None,
        max_fills: int = 256,
        clock: Callable[[], float] = time.time,
        space: SpaceKeeper | None = None,
        on_fill_finished: Callable[[str, float], None] = lambda _state, _s: None,
        mirror: MirrorView = NoMirror(),  # noqa: B008 - stateless
        shared: SharedTier | None = None,
        peers: Peers | None = None,
    ) -> None:
        self._index = index
        self._gate = gate
        self._mirror = mirror
        shelf = Shelf(files, index, space)

        async def committed(fill: Fill) -> None:
            await index.add_blob(fill.digest, fill.written, fill.media_type)
            shelf.added(fill.written)

        self._fills = Fills(
            files,
            committed,
            max_fills,
            shelf.disk_full,
            lambda fill, seconds: on_fill_finished(fill.state.value, seconds),
            space,
            shared,
        )
        self._calls = ClientCalls(upstream, gate, negative or NegativeCache(0))
        self._blobs = Blobs(shelf, index, self._calls, gate, self._fills, peers, shared)
        self._manifests = Manifests(shelf, files, index, self._calls, gate, shared)
        children = Children(self._manifests.fetch, shelf.stored_manifest)
        self._manifests.on_index = children.index_stored
        self._freshness = Freshness(clock)
        self._tags = Tags(shelf, index, self._calls, gate, self._manifests, self._freshness)
        self._hits = Hits(shelf, index, gate, self._freshness, mirror)
        self._shelf = shelf
        self.uploads = Uploads(files, index, gate, shelf, self._manifests.keep, space)
        """Pushes kept on their way upstream (write-through)."""
        self._mirror_log = LogThrottle(log, interval_s=600.0)
        self._referrers = Referrers(self._calls, lambda t, tag: self.manifest(t, tag, head=False))

    @property
    def coalesced(self) -> int:
        """Requests that joined another request's fill instead of fetching."""
        return self._fills.joined

    def filling(self) -> set[str]:
        """Digests of fills in flight (eviction leaves them alone)."""
        return self._fills.running()

    def count_served(self, host: str, from_store: int, from_upstream: int) -> None:
        self._index.count_served(host, from_store, from_upstream)

    async def blob(self, target: Target, digest: Digest, *, head: bool) -> Answer:
        return await self._blobs.blob(target, digest, head=head)

    async def manifest(self, target: Target, reference: str | Digest, *, head: bool) -> Answer:
        if not isinstance(reference, Digest):
            mirrored = await self._mirrored(target, reference)
            if mirrored is not None:
                return mirrored
        answer = await self._manifest(target, reference, head=head)
        if isinstance(answer, Relayed):
            return await refusal_or_relayed(answer.reply)
        if isinstance(answer, Refused | Filling):
            return answer
        # A manifest 404 is replayed from memory when the digest is absent (see
        # `ClientCalls.fetch`); a refusal of a stored one is remembered and replayed the
        # same way, so neither differs from the other, also while upstream is down.
        url = target.url(Kind.MANIFEST, answer.digest)
        key = self._calls.negative_key(target, "HEAD" if head else "GET", url)
        if (remembered := self._calls.remembered(key)) is not None:
            return await refusal_or_relayed(remembered)
        epoch = self._calls.epoch
        gated = await self._calls.gated(target, answer, answer.size, Kind.MANIFEST)
        if isinstance(gated, Refused) and gated.status == 404:
            self._calls.remember_refusal(key, gated.headers, epoch)
        # Only now: nothing is recorded for a refused client, nor a hit for a fetch.
        if isinstance(gated, Stored) and not gated.fetched:
            self._hits.note_hit(target, gated, manifest=True)
        return gated

    async def referrers(self, target: Target, subject: Digest, query: str = "") -> Answer:
        """The referrers of `subject` (referrers.py); `query` as the client sent it."""
        return await self._referrers.referrers(target, subject, query)

    async def _mirrored(self, target: Target, tag: str) -> Answer | None:
        """A tag the managed mirror keeps: its manifest as the mirror decided, with no
        upstream request (an `upstream`-access entry's still passes the gate). None when
        the tag is not mirrored, or its manifest is gone or not one the client takes."""
        found = self._mirror.tag(target.host, target.repository, tag)
        if found is None:
            return None
        stored = await self._shelf.stored_manifest(found.digest)
        if stored is None:  # moved by another gateway sharing a tier: its copy is there
            stored = await self._manifests.from_tier(found.digest)
        if stored is None or not accepts(target.accept, stored.media_type):
            self._mirror_log.warning(
                f"{target.host}/{target.repository}:{tag}",
                "mirror tag-not-served %s",
                fields(registry=target.host, repository=target.repository, tag=tag,
                       digest=found.digest, reason="missing" if stored is None else "accept"),
            )  # fmt: skip
            return None
        if not found.network:
            gated = await self._calls.gated(target, stored, stored.size, Kind.MANIFEST)
            if not isinstance(gated, Stored):
                return gated
        self._hits.note_hit(target, stored, manifest=True)
        return stored

    async def _manifest(self, target: Target, reference: str | Digest, *, head: bool) -> Answer:
        if not isinstance(reference, Digest):
            return await self._tags.resolve(target, reference, head=head)
        stored = await self._shelf.stored_manifest(reference)
        if stored is not None:
            return stored
        if head:
            reply = await self._calls.fetch(target, "HEAD", Kind.MANIFEST, reference)
            if reply.status != 200 or reply.length is not None:
                return Relayed(reply)
            reply.close()  # a HEAD with no length: the manifest stored says it (tags.py)
        return await self._manifests.fetch(target, reference)

    async def written(self, places: Sequence[tuple[str, str]]) -> None:
        """A client's write succeeded upstream at the first of these (host, repository)
        places; the others are that repository by its other names. The 404s remembered
        there are wrong now (a push, then a pull; cosign's sign, then verify). Awaited
        before the client hears of its write, so its next request cannot meet one."""
        self._freshness.written(places)  # tags there may have moved: ask before answering
        self._referrers.written(places)
        dropped = self._calls.forget_missing(frozenset(places))
        if dropped and places:
            host, repository = places[0]
            log.info(
                "negative forgotten %s",
                fields(registry=host, repository=repository, entries=dropped),
            )

    async def keep_manifest(
        self, source: tuple[str, str], digest: Digest, body: bytes, media_type: str
    ) -> Stored:
        """For the managed mirror: a manifest it fetched and verified, stored and indexed
        (OSError if it cannot be written)."""
        return await self._manifests.keep(source, digest, body, media_type)

    async def keep_blob(self, digest: Digest, fetch: Callable[[], Awaitable[UpstreamReply]]) -> int:
        """For the managed mirror: see `Blobs.keep`."""
        return await self._blobs.keep(digest, fetch)

    async def manifest_body(self, digest: Digest) -> tuple[bytes, str] | None:
        """A stored manifest's bytes and type, if the store holds it intact (or the shared
        tier does: then it is stored here now)."""
        stored = await self._shelf.stored_manifest(digest)
        if stored is None:  # another gateway's copy, if they share a tier
            stored = await self._manifests.from_tier(digest)
        if stored is None:
            return None
        try:
            body = await asyncio.to_thread(stored.path.read_bytes)
        except OSError:
            return None  # evicted or removed meanwhile
        return (body, stored.media_type) if Digest.of(body, digest.algorithm) == digest else None

    def stored_now(
        self, target: Target, reference: str | Digest, *, manifest: bool
    ) -> Stored | None:
        """See `Hits.stored_now`: safe from any thread."""
        return self._hits.stored_now(target, reference, manifest=manifest)

    def note_hit(self, target: Target, stored: Stored, *, manifest: bool) -> None:
        self._hits.note_hit(target, stored, manifest=manifest)
