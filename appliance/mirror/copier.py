"""One mirrored tag brought up to date: upstream asked with HEAD only (free on Docker
Hub), nothing done when the digest is the one served and the store holds all of it; a
new digest fetched completely — index, every chosen platform's manifest and blobs,
referrers if asked — and verified before the tag moves, in one transaction.

Manifest GETs are what Docker Hub counts: each is spent only while the budget leaves
more than `ratelimit.min` for the build hosts (`budget.py`). Blob GETs are not counted;
they go through the cache's fills, so a blob a build host is pulling is fetched once."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from appliance.cache.ports import Upstream, UpstreamReply, UpstreamUnavailable
from appliance.kit.logfields import fields
from appliance.mirror.actions import backup_name
from appliance.mirror.budget import Budgets
from appliance.mirror.entries import Entry
from appliance.mirror.records import BudgetSeen, MirroredTag, MirrorRecords, Move, Place
from appliance.mirror.referrers import referrer_tags, referrers_listed
from appliance.oci.digest import Digest
from appliance.oci.manifest import fetchable_blobs, platform_manifests
from appliance.oci.mediatypes import INDEX_TYPES, MANIFEST_TYPES

log = logging.getLogger(__name__)

ALL_MANIFESTS = ", ".join(MANIFEST_TYPES)
MAX_MANIFEST_BYTES = 4 << 20


class Keeper(Protocol):
    """The store, through the cache (`RegistryCache`)."""

    async def keep_manifest(
        self, source: tuple[str, str], digest: Digest, body: bytes, media_type: str
    ) -> object: ...
    async def keep_blob(
        self, digest: Digest, fetch: Callable[[], Awaitable[UpstreamReply]]
    ) -> int: ...
    async def manifest_body(self, digest: Digest) -> tuple[bytes, str] | None: ...


class CopyError(RuntimeError):
    """Upstream did not give what a copy needs, or gave something else."""


class OverBudget(Exception):
    def __init__(self, seen: BudgetSeen, minimum: int) -> None:
        super().__init__(
            f"rate-limit budget: {seen.remaining} left for {seen.credential} at"
            f" {seen.registry}, keeping {minimum} for build hosts"
        )
        self.seen = seen


@dataclass(slots=True)
class TagResult:
    tag: str
    serving: Digest | None
    upstream: Digest | None = None
    change: str = "none"
    """none, new, move, pinned (held away from upstream's), gone, waiting, error."""
    moved: bool = False
    error: str | None = None
    fetched_bytes: int = 0
    move: Move | None = field(default=None, repr=False)
    referrers: list[Digest] = field(default_factory=list, repr=False)
    """Signatures and attestations the referrers API listed, copied with the image."""
    referrer_tags: list[tuple[str, Digest]] = field(default_factory=list, repr=False)
    """…or the tags cosign's tag schema names, copied and mirrored as tags."""


class Copier:
    def __init__(
        self,
        upstream: Upstream,
        keeper: Keeper,
        records: MirrorRecords,
        budgets: Budgets,
        whose: Callable[[str], str],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.upstream = upstream
        self._keeper = keeper
        self.holding: set[str] = set()
        """Digests runs in progress copied or found, until their tags move: eviction
        leaves them alone (the scheduler clears it when no run is left)."""
        self._records = records
        self._budgets = budgets
        self._whose = whose
        """Upstream host → the egress credential the mirror uses there."""
        self._clock = clock

    async def manifest_body(self, digest: Digest) -> tuple[bytes, str] | None:
        """A stored manifest's bytes and type, if intact (what a mirrored tag opens)."""
        return await self._keeper.manifest_body(digest)

    async def head(self, entry: Entry, tag: str) -> tuple[int, Digest | None]:
        reply = await self.upstream.fetch(
            "HEAD", f"{entry.url}/manifests/{tag}", {"Accept": ALL_MANIFESTS}
        )
        reply.close()
        return reply.status, reply.digest

    async def sync(
        self, entry: Entry, tag: str, currents: Mapping[Place, MirroredTag], *, move: bool
    ) -> TagResult:
        """Check the tag upstream and, if `move`, bring it to the digest it should serve
        (`currents`: what the mirror serves now, by place)."""
        current = currents.get(entry.place(tag))
        result = TagResult(tag, current.digest if current else None)
        if current is not None and current.backup_of is not None:
            return _failed(result, f"the name is the backup ref of {current.backup_of} here:"
                                   " choose another mirror backup template")  # fmt: skip
        try:
            status, upstream = await self.head(entry, tag)
        except UpstreamUnavailable as e:
            return _failed(result, f"upstream: {e}")
        if status == 404:
            result.change = "gone" if current else "error"
            result.error = None if current else "upstream has no such tag"
            return result
        if status == 429:
            result.change = "waiting"
            result.error = "upstream answered 429: rate limit reached"
            return result
        if status != 200 or upstream is None:
            return _failed(result, f"HEAD answered {status}" + ("" if upstream else ", no digest"))
        result.upstream = upstream
        # A person's pin or rollback first, then the config's pin, else upstream's digest.
        pinned = (current.pin if current else None) or entry.pin
        wanted = pinned or upstream
        if current is not None and wanted == current.digest:
            result.change = "pinned" if upstream != wanted else "none"
            if move:  # the store must still hold all of it (`cache rm --force`)
                await self._complete(entry, wanted, result)
            if move and result.error is None:  # and signatures made since the last run
                await self._keep_referrers(entry, wanted, currents, result)
            return result
        result.change = "new" if current is None else ("pinned" if wanted != upstream else "move")
        if not move:
            return result
        await self._complete(entry, wanted, result)
        if result.error is None and result.change != "waiting":
            await self._move(
                entry, tag, current, wanted, result, "sync" if pinned is None else "pin"
            )
        if result.error is None and result.change != "waiting":
            await self._keep_referrers(entry, wanted, currents, result)
        return result

    async def _complete(self, entry: Entry, digest: Digest, result: TagResult) -> None:
        try:
            result.fetched_bytes += await self.fetch_image(entry, digest)
            if entry.referrers:
                result.fetched_bytes += await self._referrers(entry, digest, result)
        except OverBudget as e:
            result.change, result.error = "waiting", str(e)
        except (CopyError, UpstreamUnavailable, OSError, RuntimeError) as e:
            _failed(result, str(e))

    async def fetch_image(self, entry: Entry, digest: Digest, depth: int = 0) -> int:
        """`digest` (a manifest) and all it needs in the store; bytes fetched upstream."""
        self.holding.add(str(digest))
        stored = await self._keeper.manifest_body(digest)
        fetched = 0
        if stored is None:
            body, media_type = await self._get_manifest(entry, digest)
            await self._keeper.keep_manifest((entry.origin, entry.repository), digest, body,
                                             media_type)  # fmt: skip
            fetched += len(body)
        else:
            body, media_type = stored
        if media_type in INDEX_TYPES:
            if depth > 1:
                raise CopyError(f"{digest}: indexes nested deeper than two")
            for child, platform in platform_manifests(body):
                if entry.platforms and platform is not None and platform not in entry.platforms:
                    continue
                fetched += await self.fetch_image(entry, child, depth + 1)
            return fetched
        for blob in fetchable_blobs(body):
            self.holding.add(str(blob))
            fetched += await self._keeper.keep_blob(blob, self._blob_fetch(entry, blob))
        return fetched

    def _blob_fetch(self, entry: Entry, blob: Digest) -> Callable[[], Awaitable[UpstreamReply]]:
        return lambda: self.upstream.fetch("GET", f"{entry.url}/blobs/{blob}", {})

    async def _get_manifest(self, entry: Entry, digest: Digest) -> tuple[bytes, str]:
        whose = self._whose(entry.origin)
        seen = self._budgets.allows(entry.origin, whose, entry.ratelimit.min)
        if seen is not None:
            raise OverBudget(seen, entry.ratelimit.min)
        self._budgets.spent(entry.origin, whose)
        url = f"{entry.url}/manifests/{digest}"
        reply = await self.upstream.fetch("GET", url, {"Accept": ALL_MANIFESTS})
        try:
            if reply.status == 429:
                raise OverBudget(
                    BudgetSeen(entry.origin, whose, 0, None, None, self._clock()),
                    entry.ratelimit.min,
                )
            if reply.status != 200:
                raise CopyError(f"GET {url} answered {reply.status}")
            body = await reply.read(MAX_MANIFEST_BYTES + 1)
            media_type = reply.content_type.split(";", 1)[0].strip()
        finally:
            reply.close()
        if len(body) > MAX_MANIFEST_BYTES:
            raise CopyError(f"{url}: manifest larger than {MAX_MANIFEST_BYTES} bytes")
        if Digest.of(body, digest.algorithm) != digest:
            raise CopyError(f"{url}: body hashes to {Digest.of(body, digest.algorithm)}")
        if media_type not in MANIFEST_TYPES:
            raise CopyError(f"{url}: not a manifest type: {media_type!r}")
        return body, media_type

    async def _referrers(self, entry: Entry, digest: Digest, result: TagResult) -> int:
        """Signatures and attestations of `digest`: what the referrers API lists, else the
        tags cosign's tag schema names (`sha256-<hex>.sig` …), copied like the image."""
        fetched = 0
        listed = await referrers_listed(self.upstream, entry.url, digest)
        for referrer in listed or ():
            fetched += await self.fetch_image(entry, referrer)
            result.referrers.append(referrer)
        if listed is None:
            for tag in referrer_tags(digest):
                status, found = await self.head(entry, tag)
                if status == 200 and found is not None:
                    fetched += await self.fetch_image(entry, found)
                    result.referrer_tags.append((tag, found))
        return fetched

    async def _keep_referrers(
        self,
        entry: Entry,
        subject: Digest,
        currents: Mapping[Place, MirroredTag],
        result: TagResult,
    ) -> None:
        """What `_referrers` copied, kept with the image: listed ones as the subject's
        referrers, tag-schema ones as mirrored tags moved like any other."""
        if result.referrers:
            await self._records.keep_referrers(entry.registry, entry.repository, subject,
                                               result.referrers)  # fmt: skip
        for tag, digest in result.referrer_tags:
            current = currents.get(entry.place(tag))
            if current is None or current.digest != digest:
                sub = TagResult(tag, current.digest if current else None)
                await self._move(entry, tag, current, digest, sub, "sync")

    async def _move(
        self,
        entry: Entry,
        tag: str,
        current: MirroredTag | None,
        digest: Digest,
        result: TagResult,
        reason: str,
    ) -> None:
        """The tag to `digest`, if it still serves what this run saw, pin included (a
        person pinning or rolling back meanwhile wins)."""
        found = await self._keeper.manifest_body(digest)
        if found is None:
            _failed(result, f"{digest} is not in the store after its copy")
            return
        body, media_type = found
        now = self._clock()
        # Asked at every move: a source public at its first copy may be private now.
        access = entry.access or await self._access(entry, tag)
        pin = current.pin if current else None
        new = MirroredTag(entry.place(tag), entry.source, digest, media_type, len(body), now,
                          access, pin)  # fmt: skip
        moved = await self._records.move_tag(
            new, reason, expect=current.digest if current else None, expect_pin=pin,
            backup=backup_name(entry.backup, tag, now), keep_backups=entry.keep_backups,
        )  # fmt: skip
        if moved is None:
            _failed(result, "the tag was moved meanwhile (a pin or rollback?); next run")
            return
        result.moved, result.move, result.serving = True, moved, digest
        log.info(
            "mirror moved %s",
            fields(entry=entry.source, tag=tag, old=moved.old, new=digest, backup=moved.backup,
                   bytes=result.fetched_bytes),
        )  # fmt: skip

    async def _access(self, entry: Entry, tag: str) -> str:
        """`network` when upstream serves the tag to anyone, else `upstream`."""
        if self._whose(entry.origin) == "anonymous":
            return "network"
        try:
            reply = await self.upstream.fetch_anonymous("HEAD", f"{entry.url}/manifests/{tag}")
        except UpstreamUnavailable:
            return "upstream"
        reply.close()
        return "network" if reply.status == 200 else "upstream"


def _failed(result: TagResult, error: str) -> TagResult:
    result.change, result.error = "error", error
    return result


async def bounded(
    limit: int, tags: Sequence[str], job: Callable[[str], Awaitable[TagResult]]
) -> list[TagResult]:
    """`job` for each tag, at most `limit` at once, results in the order of `tags`. A job
    that raises is that tag's error; the others still run to their end (none is left
    running behind the caller's back)."""
    gate = asyncio.Semaphore(limit)

    async def one(tag: str) -> TagResult:
        async with gate:
            return await job(tag)

    results = await asyncio.gather(*(one(t) for t in tags), return_exceptions=True)
    out = []
    for tag, result in zip(tags, results, strict=True):
        if isinstance(result, asyncio.CancelledError):
            raise result
        if isinstance(result, BaseException):
            log.error("mirror tag-failed tag=%s", tag, exc_info=result)
            result = _failed(TagResult(tag, None), f"{type(result).__name__}: {result}")
        out.append(result)
    return out
