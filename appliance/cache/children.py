"""An index's child manifests, stored with it: a client pulls one platform, yet a later
pull by the index's digest, for another platform or during an outage, finds every
child manifest in the store (issue #22).

They are fetched in the background once the index is stored, with the credentials of
the client whose pull stored it, each once however many ask (joined with any fetch in
flight), one registry's runs in turn, and never spending the last `KEEP_REMAINING` of
upstream's rate limit: Docker Hub counts manifest GETs, and its answer to the index's
GET says what is left (`ratelimit-remaining`), less what runs since have spent. Blobs
stay for the pulls that need them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace

from appliance.cache.answers import Answer, Relayed, Stored, Target, UpstreamMismatch
from appliance.cache.ports import UpstreamUnavailable
from appliance.kit.bounded import BoundedMap
from appliance.kit.logfields import fields
from appliance.kit.tasks import spawn
from appliance.oci.digest import Digest, DigestError
from appliance.oci.headers import ratelimit
from appliance.oci.mediatypes import MANIFEST_TYPES

log = logging.getLogger(__name__)

KEEP_REMAINING = 20
"""Manifest GETs of upstream's rate limit that fetching children never spends: the
build hosts' own pulls come first (the managed mirror's `ratelimit.min` default)."""
MAX_CHILDREN = 64
"""An index lists a platform per entry; more than this is not an image's."""
MAX_WAITING = 16
"""Runs (one per index stored) waiting for a registry's turn; beyond it, indexes are
stored without their children (a burst of pulls of many images)."""
_MAX_HOSTS = 4096
_ACCEPT = ", ".join(MANIFEST_TYPES)

Fetch = Callable[[Target, Digest], Awaitable[Answer]]
"""A manifest by digest from upstream, stored (`Manifests.fetch`)."""
StoredManifest = Callable[[Digest], Awaitable[Stored | None]]
"""A manifest the store holds (`Shelf.stored_manifest`)."""


def child_manifests(body: bytes) -> list[Digest]:
    """The digests an index lists under `manifests`, in order, without repeats."""
    try:
        listed = json.loads(body).get("manifests")
    except (ValueError, AttributeError):
        return []
    found: dict[Digest, None] = {}
    for entry in listed if isinstance(listed, list) else []:
        if isinstance(entry, dict) and isinstance(entry.get("digest"), str):
            try:
                found[Digest.parse(entry["digest"])] = None
            except DigestError:
                continue
    return list(found)


class Children:
    def __init__(
        self, fetch: Fetch, stored: StoredManifest, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._fetch = fetch
        self._stored = stored
        self._clock = clock
        self._left: BoundedMap[str, tuple[int, float]] = BoundedMap(_MAX_HOSTS)
        """Per registry host: what its budget was after the last children fetched, when."""
        self._runs: dict[str, tuple[asyncio.Lock, int]] = {}
        """Per registry host: the lock its runs take in turn, and how many want it."""

    def index_stored(self, target: Target, headers: Mapping[str, str], body: bytes) -> None:
        """An index was just fetched for `target` (upstream's answer had `headers`): its
        children are fetched in the background, one registry's runs one at a time."""
        digests = child_manifests(body)[:MAX_CHILDREN]
        if not digests:
            return
        lock, waiting = self._runs.get(target.host, (asyncio.Lock(), 0))
        if waiting >= MAX_WAITING:
            log.info("index children-skipped %s", fields(registry=target.host,
                     repository=target.repository, reason="busy"))  # fmt: skip
            return
        self._runs[target.host] = (lock, waiting + 1)
        left = ratelimit(headers.get("ratelimit-remaining"))
        seen = None if left is None else (left[0], self._clock())
        spawn(self._run(lock, target, digests, seen),
              name=f"children {target.host}/{target.repository}")  # fmt: skip

    async def _run(
        self,
        lock: asyncio.Lock,
        target: Target,
        digests: list[Digest],
        seen: tuple[int, float] | None,
    ) -> None:
        try:
            async with lock:
                await self._fetch_all(target, digests, seen)
        finally:
            waiting = self._runs[target.host][1]
            if waiting <= 1:
                del self._runs[target.host]
            else:
                self._runs[target.host] = (lock, waiting - 1)

    def _budget(self, host: str, seen: tuple[int, float] | None) -> int | None:
        """GETs upstream still allows: what the index's answer said, less what runs since
        spent; None when upstream states no limit."""
        if seen is None:
            return None
        earlier = self._left.get(host)
        return min(seen[0], earlier[0]) if earlier and earlier[1] >= seen[1] else seen[0]

    async def _fetch_all(
        self, target: Target, digests: list[Digest], seen: tuple[int, float] | None
    ) -> None:
        where = {"registry": target.host, "repository": target.repository}
        missing = [d for d in digests if await self._stored(d) is None]
        budget = self._budget(target.host, seen)
        headers = {k: v for k, v in target.headers.items() if k.lower() != "accept"}
        accept = frozenset(MANIFEST_TYPES)
        asking = replace(target, headers={**headers, "Accept": _ACCEPT}, accept=accept)
        stored = 0
        for i, digest in enumerate(missing):
            if budget is not None and budget - 1 < KEEP_REMAINING:
                log.info("index children-skipped %s", fields(**where, ratelimit_remaining=budget,
                         children=len(missing) - i, reason="ratelimit"))  # fmt: skip
                break
            try:
                answer = await self._fetch(asking, digest)
            except (UpstreamUnavailable, UpstreamMismatch, OSError) as e:
                log.warning("index children-failed %s", fields(**where, digest=digest, error=e))
                break
            finally:
                if budget is not None:
                    budget -= 1
                    self._left.set(target.host, (budget, self._clock()))
            if isinstance(answer, Relayed):  # upstream said no (or the disk is full)
                answer.reply.close()
                log.info("index child-refused %s", fields(**where, digest=digest,
                         status=answer.reply.status))  # fmt: skip
                continue
            stored += isinstance(answer, Stored)
        if stored:
            log.info("index children-stored %s", fields(**where, children=stored))
