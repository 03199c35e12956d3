"""The SQLite index of the store (aiosqlite, WAL): the hot path of pulls — rows by
digest, tags, accesses batched — and what the access gate reads. All of regcache's SQL
lives in `store/`: the schema in schema.py, the lifecycle queries in lifecycle.py.

Results are read with `fetchall()`: iterating an aiosqlite cursor costs a thread hop
per row.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
import urllib.parse
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from appliance.cache.ports import BlobRow, TagRow
from appliance.kit.bounded import BoundedMap
from appliance.kit.logthrottle import LogThrottle
from appliance.kit.tasks import spawn
from appliance.oci.digest import Digest
from appliance.store.lifecycle import Entry, Lifecycle, Snapshot
from appliance.store.localstate import LocalState
from appliance.store.mirrorstate import MirrorState
from appliance.store.schema import (
    NewerIndex,
    check_version,
    insert_blob,
    insert_manifest,
    migrate,
    schema_version,
)

__all__ = ["Entry", "Snapshot", "SqliteIndex"]

log = logging.getLogger(__name__)

T = TypeVar("T")
_TOUCH_FLUSH_S = 5.0
_KNOWN_ROWS = 1 << 16  # rows kept in memory, each a few hundred bytes
_SELECT_TAG_ROWS = (
    "SELECT digest, media_type, size, validated_s FROM tags"
    " WHERE registry = ? AND repository = ? AND tag = ?"
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


class SqliteIndex(Lifecycle, MirrorState, LocalState):
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
        self._rows: BoundedMap[str, BlobRow] = BoundedMap(_KNOWN_ROWS)
        self._manifest_types: BoundedMap[str, str] = BoundedMap(_KNOWN_ROWS)
        self._tags: BoundedMap[str, TagRow] = BoundedMap(_KNOWN_ROWS)
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
        await _refuse_newer(path)  # before WAL mode, or a checkpoint on close
        db = await aiosqlite.connect(path, isolation_level=None)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            # FULL: a committed row survives power loss, like the fsynced file it names.
            await db.execute("PRAGMA synchronous=FULL")
            await db.execute("PRAGMA foreign_keys=ON")
            await db.execute("PRAGMA busy_timeout=5000")
            index = cls(db)
            await migrate(db)
        except BaseException:
            await db.close()  # its worker thread would otherwise keep the process alive
            raise
        return index

    async def close(self) -> None:
        if self._flusher is not None:
            self._flusher.cancel()
            await asyncio.gather(self._flusher, return_exceptions=True)
        try:
            await self._flush_or_drop()
        finally:
            await self._db.close()  # its worker thread would keep the process alive

    async def schema_version(self) -> int:
        return await schema_version(self._db)

    async def add_blob(self, digest: Digest, size: int, media_type: str | None) -> None:
        now = time.time()
        async with self._transaction() as db:
            await insert_blob(db, digest, size, media_type, now)

    async def add_manifest(
        self,
        digest: Digest,
        size: int,
        media_type: str,
        references: Sequence[Digest],
        source: tuple[str, str],
    ) -> None:
        """A manifest, what it references and the (registry, repository) it came from
        (("", ""): from no repository, e.g. another gateway's copy in the shared tier)."""
        now = time.time()
        async with self._transaction() as db:
            await insert_blob(db, digest, size, media_type, now)
            await insert_manifest(db, digest, media_type, references)
            if source[0]:
                await db.execute(
                    "INSERT OR IGNORE INTO sources (registry, repository, digest)"
                    " VALUES (?, ?, ?)", (*source, str(digest)),
                )  # fmt: skip

    async def _first(self, sql: str, params: tuple[object, ...]) -> Any:
        """The first row of a query, in one trip to the connection's thread (a cursor's
        execute, fetch and close would be three)."""
        rows = list(await self._db.execute_fetchall(sql, params))
        return rows[0] if rows else None

    async def blob(self, digest: Digest) -> BlobRow | None:
        key = str(digest)
        if (known := self._rows.use(key)) is not None:
            return known
        row = await self._first("SELECT size, media_type FROM blobs WHERE digest = ?", (key,))
        if row is None:
            return None
        return _kept(self._rows, key, BlobRow(digest, int(row[0]), row[1]))

    async def manifest_type(self, digest: Digest) -> str | None:
        key = str(digest)
        if (known := self._manifest_types.use(key)) is not None:
            return known
        row = await self._first("SELECT media_type FROM manifests WHERE digest = ?", (key,))
        return None if row is None else _kept(self._manifest_types, key, str(row[0]))

    def known_blob(self, digest: Digest) -> BlobRow | None:
        """The row, if this process has it in memory (no I/O; safe from any thread)."""
        return self._rows.get(str(digest))

    def known_manifest_type(self, digest: Digest) -> str | None:
        """Like `known_blob`, for `manifest_type`."""
        return self._manifest_types.get(str(digest))

    def known_tag(self, registry: str, repository: str, tag: str, accept: str) -> TagRow | None:
        """Like `known_blob`, for `tag`."""
        return self._tags.get("\n".join((registry, repository, tag, accept)))

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
        await self._flush_or_drop()

    async def _flush_or_drop(self) -> None:
        """`flush`, letting a batch go when it cannot be written (a full disk): these are
        statistics, never worth failing a request or a shutdown for."""
        try:
            await self.flush()
        except sqlite3.OperationalError as e:
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
        if (known := self._tags.use("\n".join(key))) is not None:
            return known
        row = await self._first(_SELECT_TAG_ROWS + " AND accept = ?", key)
        return None if row is None else _kept(self._tags, "\n".join(key), _tag_row(row))

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
        known = self._tags.use("\n".join(key))
        if known is not None and replace(known, validated_s=row.validated_s) == row:
            self._tags.set("\n".join(key), row)
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
        self._tags.set("\n".join(key), row)

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


def _kept(known: BoundedMap[str, T], key: str, value: T) -> T:
    known.set(key, value)
    return value


def _tag_row(row: Sequence[Any]) -> TagRow:
    """A `SELECT digest, media_type, size, validated_s` row."""
    return TagRow(Digest.parse(row[0]), str(row[1]), int(row[2]), float(row[3]))


async def _refuse_newer(path: Path) -> None:
    """NewerIndex if a newer regcache wrote the index at `path`, found read-only: the
    file must not be changed, not even by a checkpoint of its WAL on close."""
    try:
        async with aiosqlite.connect(_read_only(path), uri=True) as db:
            version = await schema_version(db)
    except sqlite3.OperationalError:  # none yet (or unreadable: the real open says so)
        return
    try:
        check_version(version)
    except NewerIndex as e:
        raise NewerIndex(f"{path}: {e}") from None


def _read_only(path: Path) -> str:
    return f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro"
