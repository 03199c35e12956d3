"""An index's child manifests, stored with it: a client pulls one platform, yet a later
pull by the index's digest, for another platform or during an outage, finds every
child manifest in the store (issue #22).

They are fetched in the background once the index is stored, with the credentials of
the client whose pull stored it, each once however many ask (joined with any fetch in
flight), and only while upstream's rate-limit budget stays above `KEEP_REMAINING` after
them: Docker Hub counts manifest GETs, and its answer to the index's GET says what this
client has left (`ratelimit-remaining`). Blobs stay for the pulls that need them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace

from appliance.cache.answers import Answer, Relayed, Stored, Target, UpstreamMismatch
from appliance.cache.ports import UpstreamUnavailable
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
    def __init__(self, fetch: Fetch, stored: StoredManifest) -> None:
        self._fetch = fetch
        self._stored = stored

    def index_stored(self, target: Target, headers: Mapping[str, str], body: bytes) -> None:
        """An index was just fetched for `target` (upstream's answer had `headers`): its
        children are fetched in the background."""
        digests = child_manifests(body)[:MAX_CHILDREN]
        if digests:
            left = ratelimit(headers.get("ratelimit-remaining"))
            spawn(self._fetch_all(target, digests, None if left is None else left[0]),
                  name=f"children {target.host}/{target.repository}")  # fmt: skip

    async def _fetch_all(self, target: Target, digests: list[Digest], left: int | None) -> None:
        missing = [d for d in digests if await self._stored(d) is None]
        where = {"registry": target.host, "repository": target.repository}
        if not missing:
            return
        if left is not None and left - len(missing) < KEEP_REMAINING:
            log.info("index children-skipped %s", fields(**where, children=len(missing),
                     ratelimit_remaining=left, reason="ratelimit"))  # fmt: skip
            return
        headers = {k: v for k, v in target.headers.items() if k.lower() != "accept"}
        accept = frozenset(MANIFEST_TYPES)
        asking = replace(target, headers={**headers, "Accept": _ACCEPT}, accept=accept)
        stored = 0
        for digest in missing:
            try:
                answer = await self._fetch(asking, digest)
            except (UpstreamUnavailable, UpstreamMismatch, OSError) as e:
                log.warning("index children-failed %s", fields(**where, digest=digest, error=e))
                return
            if isinstance(answer, Relayed):  # upstream said no (or the disk is full)
                answer.reply.close()
                log.info("index child-refused %s", fields(**where, digest=digest,
                         status=answer.reply.status))  # fmt: skip
                continue
            stored += isinstance(answer, Stored)
        log.info("index children-stored %s", fields(**where, children=stored))
