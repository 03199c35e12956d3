"""What upstream said yes to, kept in memory for the access gate.

`Grants` holds, per key — (host, repository, credential fingerprint) for a client,
(host, repository) for "known to be in the repository" — the digests upstream confirmed
and when. `Children` holds what each manifest vouches for. A manifest granted to a client
covers what it references, two levels deep (an index, its manifests, their config and
layers), so a normal pull adds no upstream request per layer.

Safe from any thread: only the cache's loop writes. It never changes a per-key map in
place — it publishes a new one — so a reader on another loop iterates an old or a new
snapshot, never one being changed; the outer maps are only read there with single dict
lookups, which the GIL makes atomic. Everything is bounded: the oldest keys and, within
a key, the oldest digests go first.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass

from appliance.cache.ports import UpstreamReply
from appliance.kit.bounded import BoundedMap
from appliance.oci.digest import Digest
from appliance.oci.manifest import vouched_references
from appliance.oci.mediatypes import INDEX_TYPES

_EMPTY: Mapping[Digest, float] = {}


@dataclass(frozen=True, slots=True)
class Refs:
    """The digests a manifest vouches for (`vouched_references`)."""

    digests: frozenset[Digest]
    manifests: bool
    """They are manifests themselves (the manifest is an index)."""

    @classmethod
    def of(cls, body: bytes, media_type: str | None) -> Refs:
        """What a manifest body of `media_type` vouches for."""
        media_type = media_type or ""
        return cls(frozenset(vouched_references(body, media_type)), media_type in INDEX_TYPES)


NO_REFS = Refs(frozenset(), manifests=False)
"""A blob's: it references nothing."""


class Grants:
    def __init__(self, max_keys: int, max_per_key: int) -> None:
        self._max_per_key = max_per_key
        self._by_key: BoundedMap[Hashable, Mapping[Digest, float]] = BoundedMap(max_keys)

    def get(self, key: Hashable) -> Mapping[Digest, float]:
        """A snapshot: never changed after it is returned."""
        granted = self._by_key.get(key)
        return _EMPTY if granted is None else granted

    def put(self, key: Hashable, digest: Digest, now: float) -> None:
        fresh = dict(self.get(key))
        fresh.pop(digest, None)
        fresh[digest] = now
        if len(fresh) > self._max_per_key:
            del fresh[next(iter(fresh))]  # insertion order is age order
        self._by_key.set(key, fresh)


class Children:
    """Manifest digest → `Refs`. Manifests are immutable: an entry is never stale."""

    def __init__(self, max_entries: int) -> None:
        self._entries: BoundedMap[Digest, Refs] = BoundedMap(max_entries)

    def get(self, digest: Digest) -> Refs | None:
        return self._entries.get(digest)

    def put(self, digest: Digest, refs: Refs) -> None:
        self._entries.set(digest, refs)


def vouched(
    granted: Mapping[Digest, float], digest: Digest, children: Children, since: float
) -> bool:
    """Whether `digest` was granted at or after `since`, or is referenced (two levels)
    by a manifest that was. Unknown children count as none: the caller may load them
    and ask again."""
    when = granted.get(digest)
    if when is not None and when >= since:
        return True
    for parent, when in granted.items():
        if when < since:
            continue
        refs = children.get(parent)
        if refs is None:
            continue
        if digest in refs.digests:
            return True
        if refs.manifests:
            for child in refs.digests:
                grandchildren = children.get(child)
                if grandchildren is not None and digest in grandchildren.digests:
                    return True
    return False


def unknown_children(
    granted: Mapping[Digest, float], children: Children, since: float
) -> list[Digest]:
    """Granted digests (and children of granted indexes) whose references are not known:
    what `vouched` could not look into."""
    missing: list[Digest] = []
    for parent, when in granted.items():
        if when < since:
            continue
        refs = children.get(parent)
        if refs is None:
            missing.append(parent)
        elif refs.manifests:
            missing.extend(c for c in refs.digests if children.get(c) is None)
    return missing


def shows(reply: UpstreamReply, digest: Digest, size: int | None) -> bool:
    """Whether a 2xx answer is about `digest`: the digest it announced (if any) is the
    digest, its length (if sent, and the size is known) the size, and it sent at least
    one of them that matched."""
    evidence = False
    if reply.digest is not None:
        if reply.digest != digest:
            return False
        evidence = True
    if size is not None and reply.length is not None:
        if reply.length != size:
            return False
        evidence = True
    return evidence
