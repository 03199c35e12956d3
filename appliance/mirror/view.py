"""The mirror's mappings in memory, as the cache asks about them (`cache.ports.MirrorView`):
which tags are mirrored and to what, and which digests a network-access entry opens to
anyone through its repository. Safe from any thread: reads take the current dicts,
`load` replaces them whole."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence

from appliance.cache.ports import MirrorAnswer
from appliance.mirror.records import MirroredTag, Place
from appliance.oci.digest import Digest
from appliance.oci.names import same_repository

_PLACES = 4096


class MirrorTags:
    def __init__(self, place_of: Callable[[str], str | None]) -> None:
        self._place_of = functools.lru_cache(maxsize=_PLACES)(place_of)
        """Request host → the registry the mirror keys it by (`Registries.place`)."""
        self._tags: dict[tuple[str, str, str], MirrorAnswer] = {}
        self._serving: dict[Place, Digest] = {}
        self._open: dict[tuple[str, str], frozenset[Digest]] = {}
        self.count = 0
        """Mirrored tags, backup refs included."""

    def load(
        self, tags: Sequence[MirroredTag], reachable: Mapping[tuple[str, str], frozenset[Digest]]
    ) -> None:
        """The index's mirrored tags, and per (registry, repository) what the manifests of
        its network-access tags reference, transitively (themselves included)."""
        mapping = {
            (t.place.registry, t.place.repository, t.place.tag): MirrorAnswer(
                t.digest, t.access == "network"
            )
            for t in tags
        }
        serving = {t.place: t.digest for t in tags if t.backup_of is None}
        self._tags, self._open, self.count = mapping, dict(reachable), len(mapping)
        self._serving = serving

    def serving(self) -> dict[Place, Digest]:
        """Each mirrored tag (backups left out) and what it serves."""
        return self._serving

    def tag(self, host: str, repository: str, tag: str) -> MirrorAnswer | None:
        tags = self._tags
        if not tags:
            return None
        registry = self._place_of(host)
        if registry is None:
            return None
        for name in same_repository(host, repository):
            found = tags.get((registry, name, tag))
            if found is not None:
                return found
        return None

    def opens(self, host: str, repository: str, digest: Digest) -> bool:
        held = self._open
        if not held:
            return False
        registry = self._place_of(host)
        if registry is None:
            return False
        return any(
            digest in held.get((registry, name), ()) for name in same_repository(host, repository)
        )
