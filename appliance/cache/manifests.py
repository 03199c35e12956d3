"""Manifests fetched upstream: verified against the digest asked for (or announced),
stored, indexed with what they reference; concurrent GETs of one digest share one."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from appliance.cache.access import AccessGate
from appliance.cache.answers import (
    Answer,
    MemoryReply,
    Relayed,
    Stored,
    Target,
    UpstreamMismatch,
)
from appliance.cache.calls import ClientCalls
from appliance.cache.fill import NO_SPACE
from appliance.cache.ports import BlobFiles, Index, SharedTier
from appliance.cache.shelf import Shelf
from appliance.kit.logfields import fields
from appliance.kit.singleflight import SingleFlight
from appliance.oci.digest import Digest
from appliance.oci.manifest import references, signed_schema1
from appliance.oci.mediatypes import INDEX_TYPES, OCTET_STREAM
from appliance.oci.routes import Kind

log = logging.getLogger(__name__)

MAX_MANIFEST_BYTES = 4 << 20  # distribution's own limit


class Manifests:
    def __init__(
        self,
        shelf: Shelf,
        files: BlobFiles,
        index: Index,
        calls: ClientCalls,
        gate: AccessGate,
        shared: SharedTier | None = None,
    ) -> None:
        self._shared = shared
        """Several gateways' tier: a manifest by digest is asked there before upstream."""
        self._shelf = shelf
        self._files = files
        self._index = index
        self._calls = calls
        self._gate = gate
        self._fetches: SingleFlight[Stored] = SingleFlight()
        self.on_index: Callable[[Target, Mapping[str, str], bytes], None] | None = None
        """Told of each index fetched from upstream and stored (children.py)."""

    async def fetch(self, target: Target, reference: str | Digest) -> Answer:
        """GET a manifest upstream and keep it. A GET by digest joins one in flight for
        the same URL; if that one got no manifest (its credentials?), this one asks with
        its own."""
        if not isinstance(reference, Digest):
            return await self._get(target, reference)
        key = target.url(Kind.MANIFEST, reference)
        shared = await self._fetches.join(key)
        if shared is not None:
            return shared
        return await self._fetches.lead(
            key,
            lambda: self._get(target, reference),
            lambda answer: answer if isinstance(answer, Stored) else None,
        )

    async def _get(self, target: Target, reference: str | Digest) -> Answer:
        if isinstance(reference, Digest) and (shared := await self.from_tier(reference)):
            # Another gateway's copy: this client must be entitled to it, as to any
            # content upstream did not just hand to it.
            return await self._calls.gated(target, shared, shared.size, Kind.MANIFEST)
        reply = await self._calls.fetch(target, "GET", Kind.MANIFEST, reference)
        if reply.status != 200:
            return Relayed(reply)
        try:
            body = await reply.read(MAX_MANIFEST_BYTES)
            announced = reply.digest
            media_type = _manifest_type(reply.content_type, body)
        finally:
            reply.close()
        if signed_schema1(media_type, body):
            # No digest of its bytes is the one it goes by: nothing to verify it against,
            # so it is not kept; the client gets upstream's answer as it came.
            log.info(
                "manifest passed-through %s",
                fields(registry=target.host, repository=target.repository,
                       reference=reference, reason="signed-schema1"),
            )  # fmt: skip
            return Relayed(MemoryReply(reply.status, reply.headers, body))
        digest = _verified(target.url(Kind.MANIFEST, reference), reference, announced, body)
        self._gate.grant(
            target.host, target.repository, digest, target.authorization, body, media_type
        )
        try:
            stored = await self.keep((target.host, target.repository), digest, body, media_type)
        except OSError as e:
            if e.errno not in NO_SPACE:
                raise
            self._shelf.disk_full(None, e)
            return Relayed(MemoryReply.manifest(body, digest, media_type))
        if media_type in INDEX_TYPES and self.on_index is not None:
            self.on_index(target, reply.headers, body)
        return stored

    async def from_tier(self, digest: Digest) -> Stored | None:
        """The manifest from the shared tier, verified and stored here; None if the tier
        does not hold it (or holds something else under its name: removed there)."""
        if self._shared is None or (found := await self._shared.manifest(digest)) is None:
            return None
        body, media_type = found
        if Digest.of(body, digest.algorithm) != digest:
            self._shared.distrust(digest)
            return None
        try:
            return await self.keep(("", ""), digest, body, media_type, share=False)
        except OSError as e:
            if e.errno not in NO_SPACE:
                raise
            self._shelf.disk_full(None, e)
            return None

    async def keep(
        self,
        source: tuple[str, str],
        digest: Digest,
        body: bytes,
        media_type: str,
        *,
        share: bool = True,
    ) -> Stored:
        """Store a verified manifest pulled from `source` (host, repository), indexed with
        what it references; `share`: for the other gateways too."""
        path = await self._write(digest, body)
        write = self._index.add_manifest(digest, len(body), media_type, references(body), source)
        await self._shelf.record("manifest", write)
        self._shelf.added(len(body))
        if share and self._shared is not None:
            self._shared.share_manifest(digest, body, media_type)
        log.info("manifest stored digest=%s type=%s bytes=%d", digest, media_type, len(body))
        return Stored(digest, len(body), media_type, path, fetched=True)

    async def _write(self, digest: Digest, body: bytes) -> Path:
        temp = self._files.create_temp()
        try:
            temp.write(body)
        except BaseException:
            self._files.discard(temp)
            raise
        return await self._files.commit(temp, digest)


def _verified(url: str, reference: str | Digest, announced: Digest | None, body: bytes) -> Digest:
    """The body's digest, if it is the one asked for and the one upstream announced."""
    expected = reference if isinstance(reference, Digest) else announced
    digest = Digest.of(body, expected.algorithm if expected else "sha256")
    if expected is not None and digest != expected:
        raise UpstreamMismatch(f"{url}: manifest hashes to {digest}, expected {expected}")
    if announced is not None and announced != digest and announced.algorithm == digest.algorithm:
        raise UpstreamMismatch(f"{url}: Docker-Content-Digest {announced} but body is {digest}")
    return digest


def _manifest_type(content_type: str, body: bytes) -> str:
    """The Content-Type upstream sent, else the manifest's own `mediaType` field."""
    media_type = content_type.split(";", 1)[0].strip()
    if media_type and media_type not in ("application/json", OCTET_STREAM):
        return media_type
    try:
        declared = json.loads(body).get("mediaType")
    except (ValueError, AttributeError, RecursionError):
        declared = None
    return str(declared) if declared else media_type or "application/json"
