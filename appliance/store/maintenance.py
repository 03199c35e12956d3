"""`regcache cache …`: list, account, remove, collect, verify and pin stored content.

These work on the store while the service runs: SQLite (WAL) takes a second connection,
every removal goes through `SqliteIndex.delete` (which re-checks references inside its
transaction), and a request that looked a file up just before it went re-asks (see the
proxy). Temp files are never touched here: they belong to the service's fills.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from appliance.config.model import StoreConfig
from appliance.oci.digest import Digest
from appliance.store.eviction import (
    Eviction,
    Evictor,
    cascade,
    closure,
    parent_counts,
    protected_digests,
)
from appliance.store.files import FileBlobStore
from appliance.store.index import Snapshot, SqliteIndex
from appliance.store.reconcile import Reconciliation, reconcile


class Refused(Exception):
    """The operation would break a reference or a pin; the message says what to do."""


@dataclass(frozen=True, slots=True)
class Selection:
    """What `ls`, `rm` and `pin` act on; unset parts match everything."""

    registries: frozenset[str] | None = None
    """Stored registry hosts (a configured registry name stands for its hosts)."""
    repository: str | None = None
    tag: str | None = None
    digest: str | None = None

    def matches(self, registry: str, repository: str) -> bool:
        return (self.registries is None or registry in self.registries) and (
            self.repository is None or repository == self.repository
        )


@dataclass(frozen=True, slots=True)
class Image:
    registry: str
    repository: str
    tags: tuple[str, ...]
    digest: str
    size: int
    """Bytes of the manifest and everything it references that is in the store."""
    last_access_s: float
    pinned: bool


def _held(digest: str, snapshot: Snapshot) -> set[str]:
    return closure([digest], snapshot.children) & snapshot.entries.keys()


async def images(
    index: SqliteIndex, selection: Selection, *, nested: bool = False, local: str | None = None
) -> list[Image]:
    """Manifests per repository they were pulled (or pushed to the local registry called
    `local`) from, with tags; the platform manifests of an index are part of it (listed
    only with `nested`)."""
    snapshot = await index.snapshot()
    parents = parent_counts(snapshot)
    pinned = protected_digests(snapshot, set())
    tags: dict[tuple[str, str, str], list[str]] = {}
    for registry, repository, tag, digest in await index.tags():
        tags.setdefault((registry, repository, digest), []).append(tag)
    for repository, tag, digest in await index.local_tag_rows() if local else ():
        tags.setdefault((str(local), repository, digest), []).append(tag)
    rows: list[Image] = []
    for registry, repository, digest in await index.sources():
        entry = snapshot.entries.get(digest)
        if entry is None or not selection.matches(registry, repository):
            continue
        if selection.digest is not None and digest != selection.digest:
            continue
        named = tuple(tags.get((registry, repository, digest), ()))
        if selection.tag is not None and selection.tag not in named:
            continue
        if parents.get(digest, 0) and not nested and not named:
            continue
        held = _held(digest, snapshot)
        rows.append(
            Image(
                registry,
                repository,
                named,
                digest,
                sum(snapshot.entries[d].size for d in held),
                max(snapshot.entries[d].last_access_s for d in held),
                digest in pinned,
            )
        )
    return rows


@dataclass(frozen=True, slots=True)
class RegistryUsage:
    registry: str
    images: int
    blobs: int
    bytes: int
    """Bytes of this registry's images, a blob shared between them counted once."""
    served_from_store: int
    """Bytes sent to clients from the store: what upstream did not have to send."""
    fetched: int


@dataclass(frozen=True, slots=True)
class StoreUsage:
    registries: list[RegistryUsage]
    blobs: int
    bytes: int
    """Everything in the store, each blob once however many images share it."""
    unreferenced_blobs: int
    unreferenced_bytes: int


async def usage(index: SqliteIndex) -> StoreUsage:
    snapshot = await index.snapshot()
    served = await index.served()
    per: dict[str, set[str]] = {}
    image_count: dict[str, int] = {}
    for registry, _repository, digest in await index.sources():
        if digest in snapshot.entries:
            per.setdefault(registry, set()).update(_held(digest, snapshot))
            image_count[registry] = image_count.get(registry, 0) + 1
    referenced = set().union(*per.values()) if per else set()
    loose = [d for d in snapshot.entries if d not in referenced]
    rows = [
        RegistryUsage(
            registry,
            image_count.get(registry, 0),
            len(per.get(registry, ())),
            sum(snapshot.entries[d].size for d in per.get(registry, ())),
            *served.get(registry, (0, 0)),
        )
        for registry in sorted(per.keys() | served.keys())
    ]
    return StoreUsage(
        rows,
        len(snapshot.entries),
        sum(e.size for e in snapshot.entries.values()),
        len(loose),
        sum(snapshot.entries[d].size for d in loose),
    )


@dataclass(slots=True)
class Removal:
    rows: int = 0
    bytes: int = 0
    kept: list[str] = field(default_factory=list)
    """Why some selected content stayed (shared with another image, pinned…)."""


async def remove(
    index: SqliteIndex, files: FileBlobStore, selection: Selection, *, force: bool
) -> Removal:
    """Remove the selected images (or one digest) and what only they reference.

    Refused without `force` when the content is pinned, or when a bare digest is still
    referenced by a manifest in the store. A manifest another repository also pulled
    loses only this repository's claim.
    """
    snapshot = await index.snapshot()
    parents = parent_counts(snapshot)
    protected = set() if force else protected_digests(snapshot, set())
    result = Removal()
    if selection.registries is None and selection.repository is None:
        digest = selection.digest
        if digest is None or digest not in snapshot.entries:
            raise Refused(f"{digest} is not in the store")
        users = sorted(p for p, kids in snapshot.children.items() if digest in kids)
        users = [u for u in users if u in snapshot.entries]
        if users and not force:
            raise Refused(
                f"{digest} is referenced by {', '.join(users[:5])}; remove those first, or "
                "use --force (the next pull fetches it again)"
            )
        if digest in protected:
            raise Refused(f"{digest} is pinned: `regcache cache unpin` it first, or --force")
        parents[digest] = 0
        roots = [digest]
    else:
        roots = []
        for image in await images(index, selection, nested=True):
            if image.pinned and not force:
                raise Refused(
                    f"{image.registry}/{image.repository}@{image.digest} is pinned: "
                    "`regcache cache unpin` it first, or --force"
                )
            await index.forget(image.registry, image.repository, selection.tag, image.digest)
            if await index.claims(image.digest):
                result.kept.append(f"{image.digest}: still pulled by another repository or tag")
            elif parents.get(image.digest, 0):
                result.kept.append(f"{image.digest}: part of an index still in the store")
            else:
                roots.append(image.digest)
    order: list[tuple[str, float]] = []
    for root in dict.fromkeys(roots):
        order.extend(cascade(root, snapshot, parents, protected))
    removed = await index.delete(order, referenced=force)
    await asyncio.to_thread(files.remove, [d for d, _ in removed])
    result.rows = len(removed)
    result.bytes = sum(size for _, size in removed)
    return result


@dataclass(slots=True)
class Collection:
    reconciliation: Reconciliation
    unreferenced_rows: int
    unreferenced_bytes: int
    eviction: Eviction | None


async def gc(
    index: SqliteIndex, files: FileBlobStore, limits: StoreConfig, min_age_s: float
) -> Collection:
    """Reconcile index and files, remove blobs no manifest references that were not used
    for `min_age_s`, then evict down to the configured bounds."""
    report = await reconcile(index, files, at_start=False)
    snapshot = await index.snapshot()
    parents = parent_counts(snapshot)
    protected = protected_digests(snapshot, set())
    cutoff = time.time() - min_age_s
    loose = [
        (d, e.last_access_s)
        for d, e in snapshot.entries.items()
        if not e.manifest and not parents.get(d) and d not in protected and e.last_access_s < cutoff
    ]
    removed = await index.delete(loose)
    await asyncio.to_thread(files.remove, [d for d, _ in removed])
    eviction = await Evictor(index, files, limits).check()
    return Collection(report, len(removed), sum(n for _, n in removed), eviction)


@dataclass(slots=True)
class Verification:
    checked: int = 0
    bytes: int = 0
    bad: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    seconds: float = 0.0


async def verify(
    index: SqliteIndex,
    files: FileBlobStore,
    sample: int | None,
    progress: Callable[[int, int, int], None] = lambda _i, _n, _b: None,
) -> Verification:
    """Re-hash every blob (or a random `sample`); quarantine those that do not match and
    drop their rows (the next pull fetches them again). `progress(done, total, bytes)`."""
    started = time.monotonic()
    sizes = await index.sizes()
    digests = sorted(sizes)
    if sample is not None and sample < len(digests):
        digests = random.sample(digests, sample)
    report = Verification()
    gone: list[tuple[str, float]] = []
    for i, text in enumerate(digests, 1):
        digest = Digest.parse(text)
        path = files.path_for(digest)
        try:
            good = await asyncio.to_thread(files.hashes_to_name, path, digest)
        except FileNotFoundError:
            if await index.blob(digest) is None:
                continue  # evicted since the listing (its row goes first): nothing lost
            report.missing.append(text)  # lost: the row goes
            gone.append((text, float("inf")))
            continue
        report.checked += 1
        report.bytes += sizes[text]
        if not good:
            report.bad.append(text)
            await index.delete([(text, float("inf"))], referenced=True)  # row first
            await asyncio.to_thread(files.move_to_quarantine, path, "verify: hash mismatch")
        progress(i, len(digests), report.bytes)
    await index.delete(gone, referenced=True)
    report.seconds = time.monotonic() - started
    return report
