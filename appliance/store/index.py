"""The SQLite index of the store (aiosqlite, WAL). All of regcache's SQL lives here.

Schema changes are migrations keyed by `PRAGMA user_version`; each runs once, in order,
inside a transaction. Results are read with `fetchall()`: iterating an aiosqlite cursor
costs a thread hop per row.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import sys
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Generic, TypeVar

import aiosqlite

from appliance.cache.ports import BlobRow, TagRow
from appliance.logthrottle import LogThrottle
from appliance.oci.digest import Digest
from appliance.tasks import spawn

log = logging.getLogger(__name__)

T = TypeVar("T")
_TOUCH_FLUSH_S = 5.0
_KNOWN_ROWS = 1 << 16  # rows kept in memory, each a few hundred bytes
_DELETE_BATCH = 256  # rows per write transaction: eviction never holds the lock for long
_SELECT_TAG_ROWS = (
    "SELECT digest, media_type, size, validated_s FROM tags"
    " WHERE registry = ? AND repository = ? AND tag = ?"
)

_MIGRATIONS: tuple[str, ...] = (
    # 1: blobs (manifests are blobs too, with a row in `manifests`), tags, tag history.
    """
    CREATE TABLE blobs (
        digest TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        media_type TEXT,
        created_s REAL NOT NULL,
        last_access_s REAL NOT NULL,
        hits INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE manifests (
        digest TEXT PRIMARY KEY REFERENCES blobs(digest) ON DELETE CASCADE,
        media_type TEXT NOT NULL
    );
    CREATE TABLE tags (
        registry TEXT NOT NULL,
        repository TEXT NOT NULL,
        tag TEXT NOT NULL,
        accept TEXT NOT NULL,
        digest TEXT NOT NULL,
        media_type TEXT NOT NULL,
        size INTEGER NOT NULL,
        fetched_s REAL NOT NULL,
        validated_s REAL NOT NULL,
        PRIMARY KEY (registry, repository, tag, accept)
    );
    CREATE TABLE tag_history (
        registry TEXT NOT NULL,
        repository TEXT NOT NULL,
        tag TEXT NOT NULL,
        digest TEXT NOT NULL,
        replaced_s REAL NOT NULL
    );
    CREATE INDEX tag_history_by_tag ON tag_history (registry, repository, tag);
    """,
    # 2: what regcache learnt about repositories being anonymously pullable, so that an
    # outage that outlasts a restart still serves public images.
    """
    CREATE TABLE repository_access (
        registry TEXT NOT NULL,
        repository TEXT NOT NULL,
        public INTEGER NOT NULL,
        checked_s REAL NOT NULL,
        PRIMARY KEY (registry, repository)
    );
    """,
    # 3: the store's lifecycle. `refs`: what each kept manifest needs (eviction removes a
    # manifest before what it references). `sources`: which repositories a manifest was
    # pulled from (for `cache ls/rm`). `pins`: kept whatever the size bound says.
    # `served`: bytes per registry answered from the store or fetched upstream.
    # `refs_indexed` = 0 marks manifests stored before this schema: backfilled at start.
    """
    CREATE TABLE refs (
        parent TEXT NOT NULL REFERENCES blobs(digest) ON DELETE CASCADE,
        child TEXT NOT NULL,
        PRIMARY KEY (parent, child)
    );
    CREATE INDEX refs_by_child ON refs (child);
    CREATE INDEX tags_by_digest ON tags (digest);
    CREATE TABLE sources (
        registry TEXT NOT NULL,
        repository TEXT NOT NULL,
        digest TEXT NOT NULL REFERENCES blobs(digest) ON DELETE CASCADE,
        PRIMARY KEY (registry, repository, digest)
    );
    CREATE INDEX sources_by_digest ON sources (digest);
    CREATE TABLE pins (
        registry TEXT NOT NULL,
        repository TEXT NOT NULL,
        reference TEXT NOT NULL,
        pinned_s REAL NOT NULL,
        PRIMARY KEY (registry, repository, reference)
    );
    CREATE TABLE served (
        registry TEXT PRIMARY KEY,
        from_store INTEGER NOT NULL DEFAULT 0,
        from_upstream INTEGER NOT NULL DEFAULT 0
    );
    ALTER TABLE manifests ADD COLUMN refs_indexed INTEGER NOT NULL DEFAULT 0;
    INSERT INTO sources (registry, repository, digest)
        SELECT DISTINCT tags.registry, tags.repository, tags.digest FROM tags
        JOIN manifests ON manifests.digest = tags.digest;
    """,
    # 4: the access gate decides per digest (issue #13) and trusts `sources` and
    # `repository_access`; rows written before it may name a digest under a repository
    # upstream never confirmed it in, or a repository as public on a redirect's say-so.
    # Keep the sources a tag in the same repository names (what those manifests vouch
    # for is found through them, checked); learn public status anew.
    """
    DELETE FROM sources WHERE NOT EXISTS (
        SELECT 1 FROM tags t WHERE t.registry = sources.registry
        AND t.repository = sources.repository AND t.digest = sources.digest
    );
    DELETE FROM repository_access;
    """,
)
_MAX_PUBLIC_ROWS = 100_000
_MEMBER_PATHS = """
WITH here(digest) AS (
    SELECT digest FROM sources WHERE registry = ?1 AND repository = ?2
    UNION SELECT digest FROM tags WHERE registry = ?1 AND repository = ?2
)
SELECT NULL, NULL WHERE ?3 IN (SELECT digest FROM here)
UNION ALL SELECT r.parent, NULL FROM refs r
    WHERE r.child = ?3 AND r.parent IN (SELECT digest FROM here)
UNION ALL SELECT r1.parent, r2.parent FROM refs r2 JOIN refs r1 ON r1.child = r2.parent
    WHERE r2.child = ?3 AND r1.parent IN (SELECT digest FROM here)
LIMIT 64
"""


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
    """Digests pinned directly or through a pinned tag (their references are kept too)."""


class _Recent(Generic[T]):
    """A bounded map; the least recently used entries go first."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._entries: OrderedDict[str, T] = OrderedDict()

    def get(self, key: str) -> T | None:
        value = self._entries.get(key)
        if value is not None:
            self._entries.move_to_end(key)
        return value

    def put(self, key: str, value: T) -> T:
        self._entries[key] = value
        if len(self._entries) > self._limit:
            self._entries.popitem(last=False)
        return value

    def peek(self, key: str) -> T | None:
        """`get` without reordering: one dict lookup, so safe from another thread."""
        return self._entries.get(key)

    def drop(self, key: str) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()


class SqliteIndex:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        # One connection: write transactions from concurrent tasks must not interleave.
        self._write_lock = asyncio.Lock()
        # Accesses are batched: a synchronous=FULL commit (an fsync) per cache hit would
        # cost more than the hit. Flushed every few seconds and on close.
        self._touched: dict[str, tuple[float, int]] = {}
        self._sources: set[tuple[str, str, str]] = set()
        self._served: dict[str, tuple[int, int]] = {}
        self._flusher: asyncio.Task[None] | None = None
        self._flush_log = LogThrottle(log, interval_s=60.0)
        # Rows by digest never change while they exist, and tags change only through this
        # process: hits are answered without a trip to SQLite. Rows this process deletes
        # are dropped (with every tag); a file another process (`regcache cache rm`)
        # removed is caught by the caller's size check on the file itself.
        self._rows: _Recent[BlobRow] = _Recent(_KNOWN_ROWS)
        self._manifest_types: _Recent[str] = _Recent(_KNOWN_ROWS)
        self._tags: _Recent[TagRow] = _Recent(_KNOWN_ROWS)
        self._validated: dict[tuple[str, str, str, str], tuple[str, float]] = {}
        """Revalidations that found the tag unchanged: (digest, when), batched."""

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._write_lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                # A COMMIT can fail too (a full disk): the transaction then stays open
                # unless rolled back, and later reads would see its uncommitted changes.
                await self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    await self._db.execute("ROLLBACK")
                raise

    @classmethod
    async def open(cls, path: Path) -> SqliteIndex:
        db = await aiosqlite.connect(path, isolation_level=None)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed row survives power loss, like the fsynced file it names.
            await db.execute("PRAGMA synchronous=FULL")
            await db.execute("PRAGMA foreign_keys=ON")
            await db.execute("PRAGMA busy_timeout=5000")
            index = cls(db)
            await index._migrate()
        except BaseException:
            await db.close()  # its worker thread would otherwise keep the process alive
            raise
        return index

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        await self.flush()
        await self._db.close()

    async def _migrate(self) -> None:
        async with self._db.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        version = int(row[0]) if row else 0
        for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
            await self._db.executescript(
                f"BEGIN IMMEDIATE; {script}; PRAGMA user_version = {number}; COMMIT;"
            )

    async def schema_version(self) -> int:
        async with self._db.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def add_blob(self, digest: Digest, size: int, media_type: str | None) -> None:
        now = time.time()
        async with self._transaction() as db:
            await _insert_blob(db, digest, size, media_type, now)

    async def add_manifest(
        self,
        digest: Digest,
        size: int,
        media_type: str,
        references: Sequence[Digest],
        source: tuple[str, str],
    ) -> None:
        """A manifest, what it references and the (registry, repository) it came from."""
        now = time.time()
        async with self._transaction() as db:
            await _insert_blob(db, digest, size, media_type, now)
            await _insert_manifest(db, digest, media_type, references)
            await db.execute(
                "INSERT OR IGNORE INTO sources (registry, repository, digest) VALUES (?, ?, ?)",
                (*source, str(digest)),
            )

    async def _first(self, sql: str, params: tuple[object, ...]) -> Any:
        """The first row of a query, in one trip to the connection's thread (a cursor's
        execute, fetch and close would be three)."""
        rows = list(await self._db.execute_fetchall(sql, params))
        return rows[0] if rows else None

    async def blob(self, digest: Digest) -> BlobRow | None:
        key = str(digest)
        if (known := self._rows.get(key)) is not None:
            return known
        row = await self._first("SELECT size, media_type FROM blobs WHERE digest = ?", (key,))
        if row is None:
            return None
        return self._rows.put(key, BlobRow(digest, int(row[0]), row[1]))

    async def manifest_type(self, digest: Digest) -> str | None:
        key = str(digest)
        if (known := self._manifest_types.get(key)) is not None:
            return known
        row = await self._first("SELECT media_type FROM manifests WHERE digest = ?", (key,))
        return None if row is None else self._manifest_types.put(key, str(row[0]))

    def known_blob(self, digest: Digest) -> BlobRow | None:
        """The row, if this process has it in memory (no I/O; safe from any thread)."""
        return self._rows.peek(str(digest))

    def known_manifest_type(self, digest: Digest) -> str | None:
        """Like `known_blob`, for `manifest_type`."""
        return self._manifest_types.peek(str(digest))

    def known_tag(self, registry: str, repository: str, tag: str, accept: str) -> TagRow | None:
        """Like `known_blob`, for `tag`."""
        return self._tags.peek("\n".join((registry, repository, tag, accept)))

    def touch(self, digest: Digest) -> None:
        """Record a hit; written with others within `_TOUCH_FLUSH_S`."""
        _, hits = self._touched.get(str(digest), (0.0, 0))
        self._touched[str(digest)] = (time.time(), hits + 1)
        self._flush_soon()

    def note_source(self, registry: str, repository: str, digest: Digest) -> None:
        """A stored manifest was served for this repository (batched like touches)."""
        self._sources.add((registry, repository, str(digest)))
        self._flush_soon()

    def count_served(self, registry: str, from_store: int, from_upstream: int) -> None:
        """Body bytes sent to clients, from the store or as fetched (batched)."""
        stored, fetched = self._served.get(registry, (0, 0))
        self._served[registry] = (stored + from_store, fetched + from_upstream)
        self._flush_soon()

    def _flush_soon(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = spawn(self._flush_later(), name="index-flush")

    async def _flush_later(self) -> None:
        await asyncio.sleep(_TOUCH_FLUSH_S)
        try:
            await self.flush()
        except sqlite3.OperationalError as e:  # a full disk: these are statistics, let go
            self._flush_log.warning("flush", "index flush-failed error=%s (batch dropped)", e)

    async def flush(self) -> None:
        """Write the batched hits, sources and byte counts in one transaction."""
        touched, self._touched = self._touched, {}
        sources, self._sources = self._sources, set()
        served, self._served = self._served, {}
        validated, self._validated = self._validated, {}
        if not (touched or sources or served or validated):
            return
        async with self._transaction() as db:
            await db.executemany(
                "UPDATE tags SET validated_s = max(validated_s, ?) WHERE registry = ?"
                " AND repository = ? AND tag = ? AND accept = ? AND digest = ?",
                [(when, *key, digest) for key, (digest, when) in validated.items()],
            )
            await db.executemany(
                "UPDATE blobs SET last_access_s = max(last_access_s, ?), hits = hits + ?"
                " WHERE digest = ?",
                [(when, hits, digest) for digest, (when, hits) in touched.items()],
            )
            await db.executemany(
                "INSERT OR IGNORE INTO sources (registry, repository, digest)"
                " SELECT ?, ?, digest FROM manifests WHERE digest = ?",
                sorted(sources),
            )
            await db.executemany(
                "INSERT INTO served (registry, from_store, from_upstream) VALUES (?, ?, ?)"
                " ON CONFLICT (registry) DO UPDATE SET"
                " from_store = from_store + excluded.from_store,"
                " from_upstream = from_upstream + excluded.from_upstream",
                [(registry, a, b) for registry, (a, b) in served.items()],
            )

    async def hits(self, digest: Digest) -> int:
        await self.flush()
        async with self._db.execute(
            "SELECT hits FROM blobs WHERE digest = ?", (str(digest),)
        ) as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def tag(self, registry: str, repository: str, tag: str, accept: str) -> TagRow | None:
        key = (registry, repository, tag, accept)
        if (known := self._tags.get("\n".join(key))) is not None:
            return known
        row = await self._first(_SELECT_TAG_ROWS + " AND accept = ?", key)
        return None if row is None else self._tags.put("\n".join(key), _tag_row(row))

    async def tag_rows(self, registry: str, repository: str, tag: str) -> list[TagRow]:
        """The tag's mappings for every Accept set, most recently validated first."""
        async with self._db.execute(
            _SELECT_TAG_ROWS + " ORDER BY validated_s DESC",
            (registry, repository, tag),
        ) as cursor:
            rows = await cursor.fetchall()
        return [_tag_row(r) for r in rows]

    async def set_tag(
        self,
        registry: str,
        repository: str,
        tag: str,
        accept: str,
        row: TagRow,
    ) -> None:
        """Record what `tag` resolves to; an earlier, different digest goes to history.

        A revalidation that found the same manifest only moves `validated_s`: that is
        batched like hits (a commit per tag request would cost an fsync each)."""
        key = (registry, repository, tag, accept)
        known = self._tags.get("\n".join(key))
        if known is not None and replace(known, validated_s=row.validated_s) == row:
            self._tags.put("\n".join(key), row)
            self._validated[key] = (str(row.digest), row.validated_s)
            self._flush_soon()
            return
        async with self._transaction() as db:
            async with db.execute(
                "SELECT digest FROM tags WHERE registry = ? AND repository = ? AND tag = ?"
                " AND accept = ?",
                key,
            ) as cursor:
                old = await cursor.fetchone()
            if old is not None and old[0] != str(row.digest):
                await db.execute(
                    "INSERT INTO tag_history (registry, repository, tag, digest, replaced_s)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (registry, repository, tag, old[0], row.validated_s),
                )
            await db.execute(
                "INSERT INTO tags (registry, repository, tag, accept, digest, media_type, size,"
                " fetched_s, validated_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (registry, repository, tag, accept) DO UPDATE SET"
                " digest = excluded.digest, media_type = excluded.media_type,"
                " size = excluded.size, validated_s = excluded.validated_s,"
                " fetched_s = CASE WHEN tags.digest = excluded.digest THEN tags.fetched_s"
                " ELSE excluded.fetched_s END",
                (*key, str(row.digest), row.media_type, row.size, row.validated_s,
                 row.validated_s),
            )  # fmt: skip
        self._validated.pop(key, None)
        self._tags.put("\n".join(key), row)

    async def public_status(self, registry: str, repository: str) -> tuple[bool, float] | None:
        """(public, when it was checked, epoch seconds), if regcache ever checked."""
        async with self._db.execute(
            "SELECT public, checked_s FROM repository_access WHERE registry = ? AND repository = ?",
            (registry, repository),
        ) as cursor:
            row = await cursor.fetchone()
        return None if row is None else (bool(row[0]), float(row[1]))

    async def set_public_status(
        self, registry: str, repository: str, public: bool, checked_s: float
    ) -> None:
        """Only public repositories are kept (what is not known to be public is not), at
        most `_MAX_PUBLIC_ROWS` of them: the least recently checked go first."""
        async with self._transaction() as db:
            if not public:
                await db.execute(
                    "DELETE FROM repository_access WHERE registry = ? AND repository = ?",
                    (registry, repository),
                )
                return
            await db.execute(
                "INSERT INTO repository_access (registry, repository, public, checked_s)"
                " VALUES (?, ?, 1, ?) ON CONFLICT (registry, repository) DO UPDATE SET"
                " public = 1, checked_s = excluded.checked_s",
                (registry, repository, checked_s),
            )
            await db.execute(
                "DELETE FROM repository_access WHERE rowid IN (SELECT rowid FROM"
                " repository_access ORDER BY checked_s LIMIT max(0, (SELECT count(*) FROM"
                " repository_access) - ?))",
                (_MAX_PUBLIC_ROWS,),
            )

    async def member_paths(
        self, registry: str, repository: str, digest: Digest
    ) -> list[tuple[Digest, ...]]:
        """How `digest` is known to be in the repository, through manifests pulled or
        tagged there: `()` itself, `(m,)` referenced by `m`, `(m, c)` by `m`'s `c`."""
        rows = await self._db.execute_fetchall(_MEMBER_PATHS, (registry, repository, str(digest)))
        return [tuple(Digest.parse(d) for d in row if d is not None) for row in rows]

    # Lifecycle: eviction, reconciliation, `regcache cache`.

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
        ) as cursor:
            return {str(r[0]) for r in await cursor.fetchall()}

    async def delete(
        self, victims: Sequence[tuple[str, float]], *, referenced: bool = False
    ) -> list[tuple[str, int]]:
        """Remove rows, parents before children as given; (digest, size) of those removed.

        A row goes only if it was not accessed after the given time and — unless
        `referenced` — no kept manifest references it: checked inside the transaction, so
        a manifest stored meanwhile protects its blobs. Tags naming a removed manifest go
        with it (the next pull revalidates them). The caller removes the files after.
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
                        self._rows.drop(digest)
                        self._manifest_types.drop(digest)
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
    ) -> None:
        """Re-index a verified file found without a row (manifest: type and references)."""
        now = time.time()
        async with self._transaction() as db:
            await _insert_blob(db, digest, size, None if manifest is None else manifest[0], now)
            if manifest is not None:
                await _insert_manifest(db, digest, *manifest)

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


def _tag_row(row: Sequence[Any]) -> TagRow:
    """A `SELECT digest, media_type, size, validated_s` row."""
    return TagRow(Digest.parse(row[0]), str(row[1]), int(row[2]), float(row[3]))


async def _insert_blob(
    db: aiosqlite.Connection, digest: Digest, size: int, media_type: str | None, now: float
) -> None:
    await db.execute(
        "INSERT INTO blobs (digest, size, media_type, created_s, last_access_s)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (digest) DO NOTHING",
        (str(digest), size, media_type, now, now),
    )


async def _insert_manifest(
    db: aiosqlite.Connection, digest: Digest, media_type: str, references: Sequence[Digest]
) -> None:
    await db.execute(
        "INSERT INTO manifests (digest, media_type, refs_indexed) VALUES (?, ?, 1)"
        " ON CONFLICT (digest) DO UPDATE SET refs_indexed = 1",
        (str(digest), media_type),
    )
    await db.executemany(
        "INSERT OR IGNORE INTO refs (parent, child) VALUES (?, ?)",
        [(str(digest), str(child)) for child in references],
    )
