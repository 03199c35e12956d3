"""Registry semantics, the facade `proxy/` talks to: what to answer for a manifest or
blob request, and from where.

- By digest, from the store with no upstream call when present (blobs.py, manifests.py).
- Tags are revalidated cheaply and survive upstream trouble for a while (tags.py).
- Misses are fetched once per digest (fill.py, manifests.py) and verified before kept.
- Content from the store or another client's fetch passes the access gate (access.py).
- Hits that need no I/O are answered on other threads (hits.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

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
from appliance.cache.fill import Fill
from appliance.cache.fills import Fills
from appliance.cache.hits import Hits
from appliance.cache.manifests import Manifests
from appliance.cache.negative import NegativeCache
from appliance.cache.ports import BlobFiles, Index, SpaceKeeper, Upstream
from appliance.cache.shelf import Shelf
from appliance.cache.tags import Freshness, Tags
from appliance.kit.logfields import fields
from appliance.oci.digest import Digest
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
    ) -> None:
        self._index = index
        self._gate = gate
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
        )
        self._calls = ClientCalls(upstream, gate, negative or NegativeCache(0))
        self._blobs = Blobs(shelf, index, self._calls, gate, self._fills)
        self._manifests = Manifests(shelf, files, index, self._calls, gate)
        self._freshness = Freshness(clock)
        self._tags = Tags(shelf, index, self._calls, gate, self._manifests, self._freshness)
        self._hits = Hits(shelf, index, gate, self._freshness)
        self._shelf = shelf

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
        dropped = self._calls.forget_missing(frozenset(places))
        if dropped and places:
            host, repository = places[0]
            log.info(
                "negative forgotten %s",
                fields(registry=host, repository=repository, entries=dropped),
            )

    def stored_now(
        self, target: Target, reference: str | Digest, *, manifest: bool
    ) -> Stored | None:
        """See `Hits.stored_now`: safe from any thread."""
        return self._hits.stored_now(target, reference, manifest=manifest)

    def note_hit(self, target: Target, stored: Stored, *, manifest: bool) -> None:
        self._hits.note_hit(target, stored, manifest=manifest)
