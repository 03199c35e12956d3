"""Hits answered from memory for the serving loops' threads.

Invariant: everything here is safe from any thread. It only reads what the index keeps
in memory (`known_*`), the access gate's in-memory verdicts (`vouches`) and a file's
size (a stat); it never awaits, writes, or touches an asyncio object. What it cannot
answer that way it leaves to `RegistryCache.blob()`/`manifest()` on the cache's loop,
and what a hit records (`note_hit`) is done on that loop too.
"""

from __future__ import annotations

from appliance.cache.access import AccessGate
from appliance.cache.answers import Stored, Target
from appliance.cache.ports import Index, MirrorView, NoMirror
from appliance.cache.shelf import Shelf
from appliance.cache.tags import Freshness
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import OCTET_STREAM, accept_key, accepts


class Hits:
    def __init__(
        self,
        shelf: Shelf,
        index: Index,
        gate: AccessGate,
        freshness: Freshness,
        mirror: MirrorView = NoMirror(),  # noqa: B008 - stateless
    ) -> None:
        self._shelf = shelf
        self._mirror = mirror
        self._index = index
        self._gate = gate
        self._freshness = freshness

    def stored_now(
        self, target: Target, reference: str | Digest, *, manifest: bool
    ) -> Stored | None:
        """The answer `blob()`/`manifest()` would give when it is a hit needing no I/O
        but a stat — a digest this process has in memory, or a tag within its TTL, that
        the access gate already vouches for, for this client — else None: ask them."""
        stored = self._known(target, reference, manifest=manifest)
        if stored is None:
            return None
        if not self._gate.vouches(
            target.host, target.repository, stored.digest, target.authorization
        ):
            return None
        return stored

    def _known(self, target: Target, reference: str | Digest, *, manifest: bool) -> Stored | None:
        if not manifest:
            if not isinstance(reference, Digest):
                return None  # blobs are asked for by digest only
            blob = self._index.known_blob(reference)
            return self._shelf.stored_now(reference, blob, OCTET_STREAM)
        if isinstance(reference, Digest):
            digest = reference
        elif (mirrored := self._mirror.tag(target.host, target.repository, reference)) is not None:
            digest = mirrored.digest  # as the mirror decided: no TTL, no upstream
        else:
            key = accept_key(target.accept)
            row = self._index.known_tag(target.host, target.repository, reference, key)
            if row is None or not self._freshness.fresh(target, row):
                return None
            digest = row.digest
        media_type = self._index.known_manifest_type(digest)
        if media_type is None:
            return None
        stored = self._shelf.stored_now(digest, self._index.known_blob(digest), media_type)
        by_tag = not isinstance(reference, Digest)
        if stored is None or (by_tag and not accepts(target.accept, stored.media_type)):
            return None
        return stored

    def note_hit(self, target: Target, stored: Stored, *, manifest: bool) -> None:
        """What `blob()`/`manifest()` record for a hit, for one `stored_now` answered (on
        the cache's loop)."""
        self._index.touch(stored.digest)
        if manifest:
            self._index.note_source(target.host, target.repository, stored.digest)
