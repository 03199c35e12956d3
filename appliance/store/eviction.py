"""Size-bounded, reference-aware eviction, least recently used first.

The unit of eviction is a root — a manifest no kept manifest references (an index, or an
image manifest pulled on its own), or a blob nothing references — together with what
only it references. A root is as recent as the most recently used digest it holds, so an
index whose one platform is pulled every day stays. Removing a root removes its rows
parents first, then its children that nothing else references; a blob shared by two
images is counted, and freed, once. Pinned digests, what they reference, and fills in
flight are never chosen.

Rows go in short transactions (see `SqliteIndex.delete`, which re-checks references and
access times); files are unlinked right after, with no grace period. That is safe:
every reader opens its file before it sends its status line and then reads through its
descriptor (`proxy/responses.render`: a stored file, and a fill's through `Fill.opened`;
`cache/reading.py`), and an unlinked file stays readable through an open descriptor
(POSIX; the blocks are freed at the last close). A request that looked a blob up and lost
the race gets FileNotFoundError before its status line and asks again
(`RegistryProxy._serve`: now a miss, i.e. a fill); the access gate's manifest read
treats it as "not stored". That holds for a fill that has committed too: it is not busy
any more, though it stays joinable a while (`Fills`), and `Fills.join_or_start` does not
hand out one whose file is gone. A grace period would only have saved that second ask,
at the price of bytes on disk that no figure counted: during a burst of pulls the store
went far past its bound.

The bound counts fills in flight: a fill holds room for its body (`hold`) before it
writes, and gives it back when it ends (`release`, by then indexed, or gone) — what it
will not write as soon as it stops writing (the disk filled: it streams through). One
that does not fit waits for eviction to make room, or streams through uncached. So the files
under `blobs/` and `tmp/` stay within `max_size`, give or take a manifest being stored
and what still-open readers keep of evicted files.
"""

from __future__ import annotations

import asyncio
import contextlib
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

_MIN_CHECK_GAP_S = 1.0
ROOM_WAIT_S = 5.0
"""How long a fill that would pass the bound waits for room before it streams through."""
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
    """Keeps the store within its bounds; runs every `check_interval_s` and when nudged.
    It is the cache's `SpaceKeeper`: fills hold room under the bound through it."""

    def __init__(
        self,
        index: SqliteIndex,
        files: FileBlobStore,
        limits: StoreConfig,
        busy: Callable[[], set[str]] = set,
        on_evicted: Callable[[Eviction], None] = lambda _e: None,
    ) -> None:
        self._index = index
        self._files = files
        self._limits = limits
        self.busy = busy
        """Digests not to evict now (fills in flight): set once the cache exists."""
        self._on_evicted = on_evicted
        self.stored = 0
        """Bytes in the store at the last check (for metrics)."""
        self._added = 0  # bytes ever nudged in: see `_measure`
        self._bound: int | None = None
        self.held = 0
        """Bytes fills in flight hold under the bound (written or about to be)."""
        self._waiting = 0
        self._room = asyncio.Event()  # replaced on each change: see `_room_changed`
        self._begun = self._passes = self._releases = self._last_freed = 0
        self._wake = asyncio.Event()
        self._hurry = asyncio.Event()  # a fill waits for room: no pause between checks
        self._urgent = False
        self._failure_log = LogThrottle(log, interval_s=300.0)

    def nudge(self, *, added: int = 0, urgent: bool = False) -> None:
        """`added` bytes were stored: check soon; `urgent` when a write found no space."""
        self.stored += added  # exact again at the next check
        self._added += added
        self._urgent = self._urgent or urgent
        self._wake.set()

    async def hold(self, size: int) -> bool:
        """Room for `size` more bytes of a fill: True once they fit under the bound with
        everything stored and held (waiting up to `ROOM_WAIT_S` for eviction), False if
        they cannot (the fill streams through uncached instead)."""
        if self._bound is None:
            try:
                await self._measure()
            except Exception as e:  # noqa: BLE001 - no figure, no room: stream through
                self._failure_log.warning("measure", "store usage-unknown error=%s", e)
                return False
        assert self._bound is not None
        if size > self._bound:
            return False
        deadline = asyncio.get_running_loop().time() + ROOM_WAIT_S
        self._waiting += size  # counted by the passes it asks for
        try:
            if not await self._wait_for_room(size, deadline):
                return False
        finally:
            self._waiting -= size
        self.held += size
        return True

    async def _wait_for_room(self, size: int, deadline: float) -> bool:
        assert self._bound is not None
        asked: int | None = None
        while self.stored + self.held + size > self._bound:
            if asked is None:  # a pass begun after this counts `size` as wanted
                asked = self._begun
                self._hurry.set()
                self._wake.set()
            releases, changed = self._releases, self._room
            try:
                async with asyncio.timeout_at(deadline):
                    await changed.wait()
            except TimeoutError:
                return False
            judged = self._passes > asked  # a pass that knew of this want has ended
            # A release may make room, or make a fill's bytes evictable (busy until it
            # ends); a pass that freed bytes may free more: ask again. A pass that freed
            # nothing with nothing in flight: no room is coming.
            if self._releases != releases or (judged and self._last_freed > 0):
                asked = None
            elif judged and self.held == 0:
                return False
        return True

    def release(self, size: int) -> None:
        """A fill no longer holds `size` bytes: they are indexed (counted as stored
        since its row was written) or gone."""
        if not size:
            return
        self.held -= size
        self._releases += 1
        self._room_changed()

    def _room_changed(self) -> None:
        self._room.set()
        self._room = asyncio.Event()

    async def run(self) -> None:
        await asyncio.to_thread(self._files.keep_reserve, RESERVE_BYTES)
        while True:
            self._begun += 1
            try:
                await self.check()
            except Exception as e:  # noqa: BLE001 - the next round tries again
                self._failure_log.warning("evict", "eviction failed error=%s", e)
            finally:
                self._passes += 1
                self._room_changed()
            try:
                async with asyncio.timeout(self._limits.check_interval_s):
                    await self._wake.wait()
            except TimeoutError:
                pass
            # Nudged by commits: at most one usage query a second; a write that found no
            # space or a fill waiting for room is not kept waiting.
            if not self._urgent:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_MIN_CHECK_GAP_S):
                        await self._hurry.wait()
            self._wake.clear()
            self._hurry.clear()

    async def _measure(self) -> Usage:
        added = self._added
        usage = await asyncio.to_thread(
            Usage.measure, await self._index.total_size(), str(self._files.root)
        )
        # Rows written while the sum was taken may be missing from it: count them (an
        # over-estimate until the next check, never an under-estimate).
        self.stored = usage.stored + (self._added - added)
        self._bound = self._limits.max_size.of(usage.filesystem)
        return usage

    async def check(self) -> Eviction | None:
        """Evict what the bounds ask for, counting bytes held and waited for by fills as
        stored (they are, or are about to be); only stored bytes can be freed."""
        urgent, self._urgent = self._urgent, False
        self._last_freed = 0
        usage = await self._measure()
        demand = Usage(self.stored + self.held + self._waiting, usage.filesystem, usage.free)
        need = min(bytes_to_free(self._limits, demand, urgent=urgent), self.stored)
        if need <= 0:
            return None
        evicted = await self.evict(need, reason="disk-full" if urgent else "over-bound")
        self._last_freed = evicted.bytes
        return evicted

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
            if removed:  # at once: see the module's docstring
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
