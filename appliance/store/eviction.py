"""Size-bounded, reference-aware eviction, least recently used first.

The unit of eviction is a root — a manifest no kept manifest references (an index, or an
image manifest pulled on its own), or a blob nothing references — together with what
only it references. A root is as recent as the most recently used digest it holds, so an
index whose one platform is pulled every day stays. Removing a root removes its rows
parents first, then its children that nothing else references; a blob shared by two
images is counted, and freed, once. Pinned digests, what they reference, and fills in
flight are never chosen.

Rows go in short transactions (see `SqliteIndex.delete`, which re-checks references and
access times); files are unlinked after a grace period, so a request that looked a blob
up just before it was evicted still opens it.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from appliance.config.model import StoreConfig
from appliance.kit.logthrottle import LogThrottle
from appliance.store.files import FileBlobStore
from appliance.store.index import Snapshot, SqliteIndex

log = logging.getLogger(__name__)

UNLINK_GRACE_S = 5.0
_MIN_CHECK_GAP_S = 1.0
RESERVE_BYTES = 4 << 20
"""Ballast kept on the store's filesystem: a full disk cannot take SQLite's room to
commit the very eviction that would free space."""


def closure(roots: Iterable[str], children: dict[str, list[str]]) -> set[str]:
    """`roots` and everything they reference, transitively."""
    seen: set[str] = set()
    stack = list(roots)
    while stack:
        digest = stack.pop()
        if digest not in seen:
            seen.add(digest)
            stack.extend(children.get(digest, ()))
    return seen


def parent_counts(snapshot: Snapshot) -> dict[str, int]:
    """Digest → how many manifests in the store reference it."""
    parents: dict[str, int] = {}
    for parent, kids in snapshot.children.items():
        if parent in snapshot.entries:
            for child in kids:
                parents[child] = parents.get(child, 0) + 1
    return parents


def cascade(
    root: str, snapshot: Snapshot, parents: dict[str, int], protected: set[str]
) -> list[tuple[str, float]]:
    """`root`, then each child once its last parent is gone (updating `parents`):
    (digest, last access seen) pairs, parents first."""
    chosen: list[tuple[str, float]] = []
    stack = [root]
    while stack:
        digest = stack.pop()
        chosen.append((digest, snapshot.entries[digest].last_access_s))
        for child in snapshot.children.get(digest, ()):
            if child in snapshot.entries:
                parents[child] -= 1
                if parents[child] == 0 and child not in protected:
                    stack.append(child)
    return chosen


def protected_digests(snapshot: Snapshot, busy: set[str]) -> set[str]:
    """Pinned digests with what they reference, and those in use."""
    pinned = closure((d for d in snapshot.pinned if d in snapshot.entries), snapshot.children)
    return pinned | busy


def plan(snapshot: Snapshot, need: int, busy: set[str]) -> list[tuple[str, float]]:
    """Rows to remove, in order, to free at least `need` bytes (or all that may go):
    (digest, last access seen) pairs, each parent before its children."""
    entries, children = snapshot.entries, snapshot.children
    protected = protected_digests(snapshot, busy)
    parents = parent_counts(snapshot)
    roots: list[tuple[float, str]] = []
    for digest in entries:
        if parents.get(digest, 0) == 0 and digest not in protected:
            held = closure([digest], children) & entries.keys()
            roots.append((max(entries[d].last_access_s for d in held), digest))
    heapq.heapify(roots)
    chosen: list[tuple[str, float]] = []
    freed = 0
    while roots and freed < need:
        _, root = heapq.heappop(roots)
        removed = cascade(root, snapshot, parents, protected)
        chosen.extend(removed)
        freed += sum(entries[d].size for d, _ in removed)
    return chosen


@dataclass(frozen=True, slots=True)
class Usage:
    stored: int
    """Bytes of blobs in the index."""
    filesystem: int
    free: int

    @classmethod
    def measure(cls, stored: int, path: str) -> Usage:
        stat = os.statvfs(path)
        return cls(stored, stat.f_blocks * stat.f_frsize, stat.f_bavail * stat.f_frsize)


def bytes_to_free(limits: StoreConfig, usage: Usage, *, urgent: bool = False) -> int:
    """How much eviction should remove now: 0 below the high watermark and above the
    free-space floor; `urgent` (a write found no space) frees at least the gap between
    the watermarks."""
    bound = limits.max_size.of(usage.filesystem)
    high = bound * limits.high_watermark_pct // 100
    low = bound * limits.low_watermark_pct // 100
    floor = limits.min_free.of(usage.filesystem)
    need = 0
    if usage.stored > high or urgent:
        need = max(need, usage.stored - low)
    if usage.free < floor or urgent:
        # Back above the floor by the watermark gap, so this does not run per fill.
        need = max(need, floor + (high - low) - usage.free)
    if urgent:
        need = max(need, high - low)
    return max(0, min(need, usage.stored))


@dataclass(frozen=True, slots=True)
class Eviction:
    rows: int
    bytes: int
    seconds: float


class Evictor:
    """Keeps the store within its bounds; runs every `check_interval_s` and when nudged."""

    def __init__(
        self,
        index: SqliteIndex,
        files: FileBlobStore,
        limits: StoreConfig,
        busy: Callable[[], set[str]] = set,
        grace_s: float = UNLINK_GRACE_S,
        on_evicted: Callable[[Eviction], None] = lambda _e: None,
    ) -> None:
        self._index = index
        self._files = files
        self._limits = limits
        self.busy = busy
        """Digests not to evict now (fills in flight): set once the cache exists."""
        self._grace_s = grace_s
        self._on_evicted = on_evicted
        self.stored = 0
        """Bytes in the store at the last check (for metrics)."""
        self._wake = asyncio.Event()
        self._urgent = False
        self._failure_log = LogThrottle(log, interval_s=300.0)

    def nudge(self, *, added: int = 0, urgent: bool = False) -> None:
        """`added` bytes were stored: check soon; `urgent` when a write found no space."""
        self.stored += added  # exact again at the next check
        self._urgent = self._urgent or urgent
        self._wake.set()

    async def run(self) -> None:
        await asyncio.to_thread(self._files.keep_reserve, RESERVE_BYTES)
        while True:
            try:
                await self.check()
            except Exception as e:  # noqa: BLE001 - the next round tries again
                self._failure_log.warning("evict", "eviction failed error=%s", e)
            try:
                async with asyncio.timeout(self._limits.check_interval_s):
                    await self._wake.wait()
            except TimeoutError:
                pass
            if not self._urgent:  # nudged by commits: at most one usage query a second
                await asyncio.sleep(_MIN_CHECK_GAP_S)
            self._wake.clear()

    async def check(self) -> Eviction | None:
        urgent, self._urgent = self._urgent, False
        usage = await asyncio.to_thread(
            Usage.measure, await self._index.total_size(), str(self._files.root)
        )
        self.stored = usage.stored
        need = bytes_to_free(self._limits, usage, urgent=urgent)
        if need <= 0:
            return None
        return await self.evict(need, reason="disk-full" if urgent else "over-bound")

    async def evict(self, need: int, reason: str) -> Eviction:
        try:
            return await self._evict(need, reason)
        except sqlite3.OperationalError as e:
            if not await asyncio.to_thread(self._files.release_reserve):
                raise
            log.warning("store reserve-released error=%s action=evicting", e)
            return await self._evict(need, reason)
        finally:
            await asyncio.to_thread(self._files.keep_reserve, RESERVE_BYTES)

    async def _evict(self, need: int, reason: str) -> Eviction:
        started = time.monotonic()
        # Watched from before the index is read: a digest committed again after that
        # keeps its file (its new row is written after the rename). One being committed
        # before is busy (a fill is, until its row is written) and not chosen.
        with self._files.watch_commits() as recommitted:
            snapshot = await self._index.snapshot()
            chosen = await asyncio.to_thread(plan, snapshot, need, self.busy())
            removed = await self._index.delete(chosen)
            if removed:
                await asyncio.sleep(self._grace_s)
                await asyncio.to_thread(self._files.remove, [d for d, _ in removed], recommitted)
        freed = sum(size for _, size in removed)
        result = Eviction(len(removed), freed, time.monotonic() - started)
        self.stored -= freed
        self._on_evicted(result)
        log.info(
            "store evicted reason=%s rows=%d bytes=%d wanted=%d s=%.3f",
            reason, result.rows, result.bytes, need, result.seconds,
        )  # fmt: skip
        if freed < need:
            self._failure_log.warning(
                "short",
                "store eviction-short wanted=%d freed=%d (the rest is pinned, in use or"
                " referenced by pinned images)",
                need, freed,
            )  # fmt: skip
        return result
