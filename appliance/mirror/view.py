"""The mirror's mappings in memory, as the cache asks about them (`cache.ports.MirrorView`):
which tags are mirrored and to what, and which digests a network-access entry opens to
anyone through its repository. Safe from any thread: reads take the current dicts,
`load` replaces them whole."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

from appliance.cache.ports import MirrorAnswer
from appliance.cache.verdicts import NO_REFS, Refs
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
        """The index's mirrored tags, and per (registry, repository) what its network-access
        tags open to anyone (`network_content`)."""
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

    def place(self, host: str, repository: str, tag: str) -> Place | None:
        """The mirrored tag (not a backup ref) `tag` of this repository on `host` is."""
        registry = self._place_of(host) if self._serving else None
        if registry is None:
            return None
        for name in same_repository(host, repository):
            if (found := Place(registry, name, tag)) in self._serving:
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


BodyOf = Callable[[Digest], Awaitable[tuple[bytes, str] | None]]
"""A stored manifest's bytes and type, if intact (`RegistryCache.manifest_body`)."""


async def network_content(
    tags: Iterable[MirroredTag], body_of: BodyOf
) -> dict[tuple[str, str], frozenset[Digest]]:
    """Per (registry, repository): the manifests its network-access tags serve and what
    they vouch for, through an index's manifests (`Refs.of`: the fields a registry checks
    at push). Not every reference: a manifest's other fields (`blobs`, `urls` layers…)
    could name anyone's digest in the store, which must not open to all (issue #13)."""
    known: dict[Digest, Refs] = {}
    opened: dict[tuple[str, str], set[Digest]] = {}
    for tag in tags:
        if tag.access == "network":
            found = opened.setdefault((tag.place.registry, tag.place.repository), set())
            await _vouched(tag.digest, body_of, known, found, depth=0)
    return {key: frozenset(digests) for key, digests in opened.items()}


async def _vouched(
    digest: Digest, body_of: BodyOf, known: dict[Digest, Refs], found: set[Digest], depth: int
) -> None:
    found.add(digest)
    if digest not in known:
        stored = await body_of(digest)
        known[digest] = NO_REFS if stored is None else Refs.of(*stored)
    refs = known[digest]
    for child in refs.digests:
        if child in found:
            continue
        if refs.manifests and depth < 2:  # an index's manifests, an index's in an index
            await _vouched(child, body_of, known, found, depth + 1)
        else:
            found.add(child)
