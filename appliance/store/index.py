"""The SQLite index of the store (aiosqlite, WAL). All of regcache's SQL lives here.

Schema changes are migrations keyed by `PRAGMA user_version`; each runs once, in order,
inside a transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from appliance.cache.ports import BlobRow, TagRow
from appliance.oci.digest import Digest
from appliance.tasks import spawn

_TOUCH_FLUSH_S = 5.0
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
)


class SqliteIndex:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        # One connection: write transactions from concurrent tasks must not interleave.
        self._write_lock = asyncio.Lock()
        # Accesses are batched: a synchronous=FULL commit (an fsync) per cache hit would
        # cost more than the hit. Flushed every few seconds and on close.
        self._touched: dict[str, tuple[float, int]] = {}
        self._flusher: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._write_lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            await self._db.execute("COMMIT")

    @classmethod
    async def open(cls, path: Path) -> SqliteIndex:
        db = await aiosqlite.connect(path, isolation_level=None)
        await db.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed row survives power loss, like the fsynced file it points at.
        await db.execute("PRAGMA synchronous=FULL")
        await db.execute("PRAGMA foreign_keys=ON")
        await db.execute("PRAGMA busy_timeout=5000")
        index = cls(db)
        await index._migrate()
        return index

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        await self.flush_touches()
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

    async def add_blob(
        self, digest: Digest, size: int, media_type: str | None, *, manifest: bool = False
    ) -> None:
        now = time.time()
        async with self._transaction() as db:
            await db.execute(
                "INSERT INTO blobs (digest, size, media_type, created_s, last_access_s)"
                " VALUES (?, ?, ?, ?, ?) ON CONFLICT (digest) DO NOTHING",
                (str(digest), size, media_type, now, now),
            )
            if manifest and media_type is not None:
                await db.execute(
                    "INSERT INTO manifests (digest, media_type) VALUES (?, ?)"
                    " ON CONFLICT (digest) DO NOTHING",
                    (str(digest), media_type),
                )

    async def blob(self, digest: Digest) -> BlobRow | None:
        async with self._db.execute(
            "SELECT size, media_type FROM blobs WHERE digest = ?", (str(digest),)
        ) as cursor:
            row = await cursor.fetchone()
        return None if row is None else BlobRow(digest, int(row[0]), row[1])

    async def manifest_type(self, digest: Digest) -> str | None:
        async with self._db.execute(
            "SELECT media_type FROM manifests WHERE digest = ?", (str(digest),)
        ) as cursor:
            row = await cursor.fetchone()
        return None if row is None else str(row[0])

    async def touch(self, digest: Digest) -> None:
        """Record a hit; written with others within `_TOUCH_FLUSH_S`."""
        _, hits = self._touched.get(str(digest), (0.0, 0))
        self._touched[str(digest)] = (time.time(), hits + 1)
        if self._flusher is None or self._flusher.done():
            self._flusher = spawn(self._flush_later(), name="index-touch-flush")

    async def _flush_later(self) -> None:
        await asyncio.sleep(_TOUCH_FLUSH_S)
        await self.flush_touches()

    async def flush_touches(self) -> None:
        touched, self._touched = self._touched, {}
        if not touched:
            return
        async with self._transaction() as db:
            await db.executemany(
                "UPDATE blobs SET last_access_s = max(last_access_s, ?), hits = hits + ?"
                " WHERE digest = ?",
                [(when, hits, digest) for digest, (when, hits) in touched.items()],
            )

    async def hits(self, digest: Digest) -> int:
        await self.flush_touches()
        async with self._db.execute(
            "SELECT hits FROM blobs WHERE digest = ?", (str(digest),)
        ) as cursor:
            row = await cursor.fetchone()
        return int(row[0]) if row else 0

    async def tag(self, registry: str, repository: str, tag: str, accept: str) -> TagRow | None:
        async with self._db.execute(
            _SELECT_TAG_ROWS + " AND accept = ?",
            (registry, repository, tag, accept),
        ) as cursor:
            row = await cursor.fetchone()
        return None if row is None else _tag_row(row)

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
        """Record what `tag` resolves to; an earlier, different digest goes to history."""
        key = (registry, repository, tag, accept)
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
        async with self._transaction() as db:
            await db.execute(
                "INSERT INTO repository_access (registry, repository, public, checked_s)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (registry, repository) DO UPDATE SET"
                " public = excluded.public, checked_s = excluded.checked_s",
                (registry, repository, int(public), checked_s),
            )

    async def tag_history(self, registry: str, repository: str, tag: str) -> list[Digest]:
        async with self._db.execute(
            "SELECT digest FROM tag_history WHERE registry = ? AND repository = ? AND tag = ?"
            " ORDER BY replaced_s",
            (registry, repository, tag),
        ) as cursor:
            rows = await cursor.fetchall()
        return [Digest.parse(r[0]) for r in rows]


def _tag_row(row: Sequence[Any]) -> TagRow:
    """A `SELECT digest, media_type, size, validated_s` row."""
    return TagRow(Digest.parse(row[0]), str(row[1]), int(row[2]), float(row[3]))
