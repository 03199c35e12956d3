"""The index's lifecycle queries: what eviction plans over and deletes, what
reconciliation restores, and what `regcache cache` lists, pins and forgets.

`SqliteIndex` inherits them; they share its connection, write lock and in-memory rows.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import aiosqlite

from appliance.cache.ports import BlobRow, TagRow
from appliance.kit.bounded import BoundedMap
from appliance.oci.digest import Digest
from appliance.store.schema import insert_blob, insert_manifest

_DELETE_BATCH = 256  # rows per write transaction: eviction never holds the lock for long


@dataclass(frozen=True, slots=True)
class Entry:
    size: int
    last_access_s: float
    manifest: bool


@dataclass(slots=True)
class Snapshot:
    """The index as eviction plans over it: read without the write lock."""

    entries: dict[str, Entry]
    children: dict[str, list[str]]
    """Manifest digest → what it references (present in the store or not)."""
    pinned: set[str]
    """Digests pinned directly, through a pinned tag, or mirrored (their references are
    kept too)."""


class Lifecycle:
    _db: aiosqlite.Connection
    _rows: BoundedMap[str, BlobRow]
    _manifest_types: BoundedMap[str, str]
    _tags: BoundedMap[str, TagRow]

    def _transaction(self) -> AbstractAsyncContextManager[aiosqlite.Connection]:
        raise NotImplementedError

    async def flush(self) -> None:
        raise NotImplementedError

    async def total_size(self) -> int:
        async with self._db.execute("SELECT coalesce(sum(size), 0) FROM blobs") as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def snapshot(self) -> Snapshot:
        await self.flush()  # last accesses must be current for the staleness guard
        entries: dict[str, Entry] = {}
        async with self._db.execute(
            "SELECT b.digest, b.size, b.last_access_s, m.digest IS NOT NULL FROM blobs b"
            " LEFT JOIN manifests m ON m.digest = b.digest"
        ) as cursor:
            for digest, size, last, manifest in await cursor.fetchall():
                entries[digest] = Entry(int(size), float(last), bool(manifest))
        children: dict[str, list[str]] = {}
        async with self._db.execute("SELECT parent, child FROM refs") as cursor:
            for parent, child in await cursor.fetchall():
                children.setdefault(parent, []).append(child)
        return Snapshot(entries, children, await self.pinned_digests())

    async def pinned_digests(self) -> set[str]:
        async with self._db.execute(
            "SELECT t.digest FROM tags t JOIN pins p ON p.registry = t.registry"
            " AND p.repository = t.repository AND p.reference = t.tag"
            " UNION SELECT reference FROM pins WHERE reference LIKE '%:%'"
            # The managed mirror's tags, backups and pins: never evicted (issue #16).
            " UNION SELECT digest FROM mirror_tags"
            " UNION SELECT pin FROM mirror_tags WHERE pin IS NOT NULL"
            " UNION SELECT digest FROM mirror_referrers"
            # The local registry's content: it has no upstream to fetch it again from.
            " UNION SELECT digest FROM local_manifests UNION SELECT digest FROM local_blobs"
        ) as cursor:
            return {str(r[0]) for r in await cursor.fetchall()}

    async def delete(
        self, victims: Sequence[tuple[str, float]], *, referenced: bool = False
    ) -> list[tuple[str, int]]:
        """Remove rows, parents before children as given; (digest, size) of those removed.

        A row goes only if it was not accessed after the given time and — unless
        `referenced` — no kept manifest references it: checked inside the transaction, so
        a manifest stored meanwhile protects its blobs; the local registry's content never
        goes. Tags naming a removed manifest go with it (the next pull revalidates them).
        The caller removes the files after.
        """
        removed: list[tuple[str, int]] = []
        for start in range(0, len(victims), _DELETE_BATCH):
            batch = dict(victims[start : start + _DELETE_BATCH])
            async with self._transaction() as db:
                # One statement per pass; a child whose parent goes in this pass is still
                # referenced when the pass's rows are chosen, so it goes in the next one.
                while batch:
                    async with db.execute(
                        "DELETE FROM blobs WHERE digest IN (SELECT json_extract(j.value, '$[0]')"
                        " FROM json_each(?) j) AND last_access_s <= (SELECT"
                        " json_extract(j.value, '$[1]') FROM json_each(?) j"
                        " WHERE json_extract(j.value, '$[0]') = blobs.digest)"
                        " AND (? OR NOT EXISTS (SELECT 1 FROM refs WHERE child = blobs.digest))"
                        # Pushed to the local registry meanwhile: it is its now (only its
                        # own DELETE lets go of it).
                        " AND NOT EXISTS (SELECT 1 FROM local_blobs l"
                        " WHERE l.digest = blobs.digest)"
                        " AND NOT EXISTS (SELECT 1 FROM local_manifests l"
                        " WHERE l.digest = blobs.digest)"
                        " RETURNING digest, size",
                        (
                            *[json.dumps([[d, _finite(t)] for d, t in batch.items()])] * 2,
                            int(referenced),
                        ),
                    ) as cursor:
                        gone = [(str(d), int(n)) for d, n in await cursor.fetchall()]
                    if not gone:
                        break
                    self._tags.clear()  # the tags naming what goes are deleted below
                    await db.execute(
                        "DELETE FROM tags WHERE digest IN (SELECT value FROM json_each(?))",
                        (json.dumps([d for d, _ in gone]),),
                    )
                    removed.extend(gone)
                    for digest, _ in gone:
                        del batch[digest]
                        self._rows.pop(digest)
                        self._manifest_types.pop(digest)
        return removed

    async def sizes(self) -> dict[str, int]:
        """Every blob row: digest → size (reconciliation compares them with the files)."""
        async with self._db.execute("SELECT digest, size FROM blobs") as cursor:
            return {str(d): int(n) for d, n in await cursor.fetchall()}

    async def manifests_without_refs(self) -> list[str]:
        async with self._db.execute(
            "SELECT digest FROM manifests WHERE refs_indexed = 0"
        ) as cursor:
            return [str(r[0]) for r in await cursor.fetchall()]

    async def restore(
        self, digest: Digest, size: int, manifest: tuple[str, Sequence[Digest]] | None
    ) -> bool:
        """Re-index a verified file found without a row (manifest: type and references);
        False if it has one by now (a fill committed it meanwhile: its row stands)."""
        now = time.time()
        async with self._transaction() as db:
            await insert_blob(db, digest, size, None if manifest is None else manifest[0], now)
            rows = await db.execute_fetchall("SELECT changes()")
            if not next(iter(rows))[0]:
                return False
            if manifest is not None:
                await insert_manifest(db, digest, *manifest)
        return True

    async def set_references(self, digest: Digest, references: Sequence[Digest]) -> None:
        """What a manifest stored before schema 3 references (backfilled at start)."""
        async with self._transaction() as db:
            await db.execute(
                "UPDATE manifests SET refs_indexed = 1 WHERE digest = ?", (str(digest),)
            )
            await db.executemany(
                "INSERT OR IGNORE INTO refs (parent, child) VALUES (?, ?)",
                [(str(digest), str(child)) for child in references],
            )

    async def sources(self) -> list[tuple[str, str, str]]:
        """(registry, repository, manifest digest) for every manifest pulled from each."""
        async with self._db.execute(
            "SELECT registry, repository, digest FROM sources ORDER BY 1, 2, 3"
        ) as cursor:
            return [(str(a), str(b), str(c)) for a, b, c in await cursor.fetchall()]

    async def tags(self) -> list[tuple[str, str, str, str]]:
        """(registry, repository, tag, digest) for every tag mapping."""
        async with self._db.execute(
            "SELECT DISTINCT registry, repository, tag, digest FROM tags ORDER BY 1, 2, 3"
        ) as cursor:
            return [(str(a), str(b), str(c), str(d)) for a, b, c, d in await cursor.fetchall()]

    async def pins(self) -> list[tuple[str, str, str]]:
        async with self._db.execute(
            "SELECT registry, repository, reference FROM pins ORDER BY 1, 2, 3"
        ) as cursor:
            return [(str(a), str(b), str(c)) for a, b, c in await cursor.fetchall()]

    async def set_pin(self, registry: str, repository: str, reference: str, pinned: bool) -> bool:
        """Pin or unpin; False if that changed nothing."""
        key = (registry, repository, reference)
        async with self._transaction() as db:
            if pinned:
                sql = "INSERT OR IGNORE INTO pins VALUES (?, ?, ?, ?)"
                cursor = await db.execute(sql, (*key, time.time()))
            else:
                sql = "DELETE FROM pins WHERE registry = ? AND repository = ? AND reference = ?"
                cursor = await db.execute(sql, key)
            return cursor.rowcount > 0

    async def hold_digests(self, holder: str, digests: Iterable[Digest], *, held: bool) -> None:
        """Pin digests for a while (an import between committing files and moving tags),
        under `holder`'s name; `held=False` lets go of all of them."""
        async with self._transaction() as db:
            if held:
                now = time.time()
                await db.executemany(
                    "INSERT OR IGNORE INTO pins VALUES (?, '', ?, ?)",
                    [(holder, str(d), now) for d in digests],
                )
            else:
                await db.execute("DELETE FROM pins WHERE registry = ?", (holder,))

    async def forget(self, registry: str, repository: str, tag: str | None, digest: str) -> None:
        """Drop a repository's claim on a manifest: its source row and tag mappings
        (`tag` None: every tag of the repository naming it)."""
        async with self._transaction() as db:
            await db.execute(
                "DELETE FROM tags WHERE registry = ? AND repository = ? AND digest = ?"
                " AND (? IS NULL OR tag = ?)",
                (registry, repository, digest, tag, tag),
            )
            await db.execute(
                "DELETE FROM sources WHERE registry = ? AND repository = ? AND digest = ?"
                " AND NOT EXISTS (SELECT 1 FROM tags WHERE registry = ? AND repository = ?"
                " AND digest = ?)",
                (registry, repository, digest) * 2,
            )

    async def served(self) -> dict[str, tuple[int, int]]:
        """Registry → (bytes sent from the store, bytes sent as fetched upstream)."""
        await self.flush()
        async with self._db.execute(
            "SELECT registry, from_store, from_upstream FROM served"
        ) as cursor:
            return {str(r): (int(a), int(b)) for r, a, b in await cursor.fetchall()}

    async def claims(self, digest: str) -> int:
        """How many repositories still pull or tag a manifest."""
        async with self._db.execute(
            "SELECT (SELECT count(*) FROM sources WHERE digest = ?)"
            " + (SELECT count(*) FROM tags WHERE digest = ?)",
            (digest, digest),
        ) as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def integrity_check(self) -> str:
        async with self._db.execute("PRAGMA integrity_check") as cursor:
            rows = await cursor.fetchall()
        return "; ".join(str(r[0]) for r in rows)

    async def tag_history(self, registry: str, repository: str, tag: str) -> list[Digest]:
        async with self._db.execute(
            "SELECT digest FROM tag_history WHERE registry = ? AND repository = ? AND tag = ?"
            " ORDER BY replaced_s",
            (registry, repository, tag),
        ) as cursor:
            rows = await cursor.fetchall()
        return [Digest.parse(r[0]) for r in rows]


def _finite(seconds: float) -> float:
    """JSON has no infinity: "whenever it was last used" is the largest float."""
    return min(seconds, sys.float_info.max)
