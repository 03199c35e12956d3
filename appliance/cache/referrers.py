"""Referrers (OCI 1.1, `GET /v2/<name>/referrers/<digest>`): the signatures, SBOMs and
attestations that name a manifest as their subject.

A registry with the referrers API answers it; the answer is kept `ttl_s` per credential
(a push through regcache to that repository drops it). The spec forbids such a registry
a 404 there, so a 404 (distribution 2.8) means it has none: then the answer comes from
the spec's fallback tag `sha256-<hex>`, the index of referrers that clients maintain,
read through the cache like any tag (revalidated by HEAD, gated, from the store while
upstream is down) and filtered by `artifactType`. With no fallback tag either, the 404
stays: clients that probe for the API (oras-go asks about a digest nobody has) still
find it absent, and go on maintaining the fallback tag when they push.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from urllib.parse import quote

from appliance.cache.answers import Answer, MemoryReply, Refused, Relayed, Stored, Target
from appliance.cache.calls import ClientCalls
from appliance.cache.ports import UpstreamUnavailable
from appliance.kit.bounded import BoundedMap
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import OCI_INDEX
from appliance.oci.routes import Kind

TTL_S = 60.0
"""How long an upstream referrers answer is reused for the same credential: a new
signature shows within this (at once when pushed through regcache)."""
NO_API_S = 600.0
"""How long a registry that answered 404 is taken to have no referrers API."""
MAX_BODY_BYTES = 4 << 20
"""A referrers answer is an image index: the limit manifests have."""
_MAX_ANSWERS = 4096
_API = frozenset({"Content-Type", "OCI-Filters-Applied"})

Manifest = Callable[[Target, str], Awaitable[Answer]]
"""A tag's manifest through the cache (`RegistryCache.manifest`, GET)."""


class Referrers:
    def __init__(self, calls: ClientCalls, manifest: Manifest, ttl_s: float = TTL_S) -> None:
        self._calls = calls
        self._manifest = manifest
        self._answers: BoundedMap[tuple[str, ...], MemoryReply] = BoundedMap(_MAX_ANSWERS, ttl_s)
        self._no_api: BoundedMap[str, bool] = BoundedMap(_MAX_ANSWERS, NO_API_S)

    async def referrers(self, target: Target, subject: Digest, artifact_type: str | None) -> Answer:
        key = self._key(target, subject, artifact_type)
        kept = self._answers.get(key)
        if kept is not None:
            return Relayed(kept)
        if target.host not in self._no_api:
            try:
                answer = await self._from_api(target, subject, artifact_type)
            except UpstreamUnavailable:
                answer = None  # the fallback tag may be in the store
            if answer is not None:
                if isinstance(answer, Relayed) and isinstance(answer.reply, MemoryReply):
                    self._answers.set(key, answer.reply)
                return answer
        return await self._from_tag(target, subject, artifact_type)

    def written(self, places: Sequence[tuple[str, str]]) -> None:
        """A push to these (host, repository) places: their answers may be wrong now."""
        for key in self._answers:
            if (key[0], key[1]) in places:
                self._answers.pop(key)

    def _key(self, target: Target, subject: Digest, artifact_type: str | None) -> tuple[str, ...]:
        fingerprint = self._calls.fingerprint(target.authorization)
        return (target.host, target.repository, str(subject), artifact_type or "", fingerprint)

    async def _from_api(
        self, target: Target, subject: Digest, artifact_type: str | None
    ) -> Answer | None:
        """Upstream's referrers API answer; None when it has no such API (404)."""
        query = "" if artifact_type is None else f"?artifactType={quote(artifact_type, safe='')}"
        reply = await self._calls.fetch(target, "GET", Kind.REFERRERS, subject, query=query)
        try:
            if reply.status == 404:
                self._no_api.set(target.host, True)
                return None
            if reply.status != 200:
                return Refused(reply.status, reply.headers.get("WWW-Authenticate"))
            body = await reply.read(MAX_BODY_BYTES + 1)
        finally:
            reply.close()
        if len(body) > MAX_BODY_BYTES:
            return Refused(502)
        headers = {k: v for k, v in reply.headers.items() if k in _API}
        return Relayed(MemoryReply(200, {**headers, "Content-Length": str(len(body))}, body))

    async def _from_tag(self, target: Target, subject: Digest, artifact_type: str | None) -> Answer:
        """The answer from the fallback tag `<alg>-<hex>`: its index's descriptors, of
        `artifact_type` if one is asked for."""
        tagged = replace(target, accept=frozenset({OCI_INDEX}))
        answer = await self._manifest(tagged, f"{subject.algorithm}-{subject.hex}")
        if not isinstance(answer, Stored):
            return answer if isinstance(answer, Refused) else Refused(404)
        try:
            body = await asyncio.to_thread(answer.path.read_bytes)
            manifests = json.loads(body).get("manifests", [])
        except (OSError, ValueError, AttributeError):
            return Refused(404)  # gone meanwhile, or not an index: no referrers known
        if not isinstance(manifests, list):
            return Refused(404)
        if artifact_type is not None:
            manifests = [m for m in manifests if isinstance(m, dict)
                         and m.get("artifactType") == artifact_type]  # fmt: skip
        out = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests},
                         separators=(",", ":")).encode()  # fmt: skip
        headers = {"Content-Type": OCI_INDEX, "Content-Length": str(len(out))}
        if artifact_type is not None:
            headers["OCI-Filters-Applied"] = "artifactType"
        return Relayed(MemoryReply(200, headers, out))
