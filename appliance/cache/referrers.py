"""Referrers (OCI 1.1, `GET /v2/<name>/referrers/<digest>`): the signatures, SBOMs and
attestations that name a manifest as their subject.

A registry with the referrers API answers it; the answer is kept `ttl_s` per credential
and query (a push through regcache to that repository drops it, also one asked for while
the push went on). The spec forbids such a registry a 404 there unless the repository is
unknown (a registry error says so), so a bare 404 (distribution 2.8 has no such route)
means it has none: then the answer comes from the spec's fallback tag `sha256-<hex>`, the
index of referrers clients maintain, read through the cache like any tag (revalidated by
HEAD, gated, from the store while upstream is down) and filtered by `artifactType`. With
no fallback tag either, the 404 stays: clients that probe for the API (oras-go asks
about a digest nobody has) still find it absent, and go on maintaining the fallback tag
when they push.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from urllib.parse import parse_qs

from appliance.cache.answers import Answer, MemoryReply, Refused, Relayed, Stored, Target
from appliance.cache.calls import ClientCalls
from appliance.cache.ports import UpstreamReply, UpstreamUnavailable
from appliance.kit.bounded import BoundedMap
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import OCI_INDEX
from appliance.oci.routes import Kind

TTL_S = 60.0
"""How long an upstream referrers answer is reused for the same credential: a new
signature shows within this (at once when pushed through regcache)."""
NO_API_S = 600.0
"""How long a repository whose registry answered a bare 404 is asked no more."""
MAX_BODY_BYTES = 4 << 20
"""A referrers answer is an image index: the limit manifests have."""
_MAX_ENTRIES = 4096
_KEPT = ("Content-Type", "OCI-Filters-Applied", "Link")
"""Upstream's headers an answer keeps (`Link`: the next page)."""
_NO_SUCH = frozenset({"NAME_UNKNOWN", "NAME_INVALID", "DENIED", "UNAUTHORIZED"})
"""Codes of a 404 that speaks of the repository, not of a missing API."""

Manifest = Callable[[Target, str], Awaitable[Answer]]
"""A tag's manifest through the cache (`RegistryCache.manifest`, GET)."""


class Referrers:
    def __init__(self, calls: ClientCalls, manifest: Manifest, ttl_s: float = TTL_S) -> None:
        self._calls = calls
        self._manifest = manifest
        self._answers: BoundedMap[tuple[str, ...], MemoryReply] = BoundedMap(_MAX_ENTRIES, ttl_s)
        self._no_api: BoundedMap[tuple[str, ...], bool] = BoundedMap(_MAX_ENTRIES, NO_API_S)
        self._epoch = 0
        """Counts pushes: an answer asked for before one is not kept after it."""

    async def referrers(self, target: Target, subject: Digest, query: str = "") -> Answer:
        """`query` as the client sent it (`artifactType=…`, `n`, `last`)."""
        key = self._key(target, subject, query)
        if (kept := self._answers.get(key)) is not None:
            return Relayed(kept)
        where = key[:2] + key[-1:]  # host, repository, credential
        if where not in self._no_api:
            epoch = self._epoch
            try:
                answer = await self._from_api(target, subject, query)
            except UpstreamUnavailable:
                answer = None  # the fallback tag may be in the store
            else:
                if answer is None:
                    self._no_api.set(where, True)
            if answer is not None:
                reply = answer.reply if isinstance(answer, Relayed) else None
                if isinstance(reply, MemoryReply) and epoch == self._epoch:
                    self._answers.set(key, reply)
                return answer
        types = parse_qs(query).get("artifactType")
        return await self._from_tag(target, subject, types[0] if types else None)

    def written(self, places: Sequence[tuple[str, str]]) -> None:
        """A push to these (host, repository) places: their answers may be wrong now."""
        self._epoch += 1
        for key in self._answers:
            if (key[0], key[1]) in places:
                self._answers.pop(key)

    def _key(self, target: Target, subject: Digest, query: str) -> tuple[str, ...]:
        fingerprint = self._calls.fingerprint(target.authorization)
        return (target.host, target.repository, str(subject), query, fingerprint)

    async def _from_api(self, target: Target, subject: Digest, query: str) -> Answer | None:
        """Upstream's referrers API answer; None when it has no such API (a bare 404)."""
        reply = await self._calls.fetch(
            target, "GET", Kind.REFERRERS, subject, query=f"?{query}" if query else ""
        )
        try:
            if reply.status not in (200, 404):
                return Refused.of(reply.status, reply.headers)
            body = await reply.read(MAX_BODY_BYTES + 1)
        finally:
            reply.close()
        if reply.status == 404:
            return Refused.of(404, reply.headers) if _speaks_of_repository(body) else None
        if len(body) > MAX_BODY_BYTES:
            return Refused(502)
        headers = {k: v for k in _KEPT if (v := reply.headers.get(k)) is not None}
        return Relayed(MemoryReply(200, {**headers, "Content-Length": str(len(body))}, body))

    async def _from_tag(self, target: Target, subject: Digest, artifact_type: str | None) -> Answer:
        """The answer from the fallback tag `<alg>-<hex>`: its index's descriptors, of
        `artifact_type` if one is asked for."""
        tagged = replace(target, accept=frozenset({OCI_INDEX}))
        answer = await self._manifest(tagged, f"{subject.algorithm}-{subject.hex}")
        body = await _body(answer)
        if body is None:
            return answer if isinstance(answer, Refused) else Refused(404)
        try:
            manifests = json.loads(body).get("manifests", [])
        except (ValueError, AttributeError):
            manifests = None
        if not isinstance(manifests, list):
            return Refused(404)  # not an index: no referrers known
        if artifact_type is not None:
            manifests = [m for m in manifests if isinstance(m, dict)
                         and m.get("artifactType") == artifact_type]  # fmt: skip
        out = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests},
                         separators=(",", ":")).encode()  # fmt: skip
        headers = {"Content-Type": OCI_INDEX, "Content-Length": str(len(out))}
        if artifact_type is not None:
            headers["OCI-Filters-Applied"] = "artifactType"
        return Relayed(MemoryReply(200, headers, out))


async def _body(answer: Answer) -> bytes | None:
    """The bytes of a manifest answer that has them (stored, or held in memory on a full
    disk); None for any other (a live reply is closed)."""
    if isinstance(answer, Stored):
        try:
            return await asyncio.to_thread(answer.path.read_bytes)
        except OSError:
            return None  # evicted meanwhile
    if isinstance(answer, Relayed):
        reply: UpstreamReply = answer.reply
        if isinstance(reply, MemoryReply) and reply.status == 200:
            return reply.body
        reply.close()
    return None


def _speaks_of_repository(body: bytes) -> bool:
    """Whether a 404's body is a registry error about the repository or the client
    (the API is there), rather than a bare 404 of an unknown route."""
    try:
        errors = json.loads(body).get("errors")
    except (ValueError, AttributeError):
        return False
    return isinstance(errors, list) and any(
        isinstance(e, dict) and e.get("code") in _NO_SUCH for e in errors
    )
