"""The local registry's rows (schema 6): `SqliteIndex` inherits them, sharing its
connection and write lock. A manifest goes in with its blob row, its references and its
tag in one transaction, so a crash never leaves a tag naming a manifest the index lacks."""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiosqlite

from appliance.local.ports import LocalManifest, LocalUsage
from appliance.oci.digest import Digest
from appliance.store.schema import insert_blob, insert_manifest

_MANIFEST = (
    "SELECT digest, media_type, size, artifact_type, annotations, subject"
    " FROM local_manifests WHERE repository = ?"
)
_REPOSITORIES = (
    "SELECT repository FROM local_blobs UNION SELECT repository FROM local_manifests"
    " UNION SELECT repository FROM local_tags ORDER BY 1"
)
_USAGE = (
    "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM (SELECT digest, size FROM local_blobs"
    " UNION SELECT digest, size FROM local_manifests)"
)


class LocalState:
    _db: aiosqlite.Connection

    def _transaction(self) -> AbstractAsyncContextManager[aiosqlite.Connection]:
        raise NotImplementedError

    async def _local_rows(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        return list(await self._db.execute_fetchall(sql, params))

    async def local_blob(self, repository: str, digest: Digest) -> int | None:
        rows = await self._local_rows(
            "SELECT size FROM local_blobs WHERE repository = ? AND digest = ?",
            (repository, str(digest)),
        )
        return int(rows[0][0]) if rows else None

    async def add_local_blob(self, repository: str, digest: Digest, size: int) -> None:
        now = time.time()
        async with self._transaction() as db:
            await insert_blob(db, digest, size, None, now)
            await db.execute(
                "INSERT OR IGNORE INTO local_blobs VALUES (?, ?, ?, ?)",
                (repository, str(digest), size, now),
            )

    async def delete_local_blob(self, repository: str, digest: Digest) -> bool:
        async with self._transaction() as db:
            cursor = await db.execute(
                "DELETE FROM local_blobs WHERE repository = ? AND digest = ?",
                (repository, str(digest)),
            )
            return cursor.rowcount > 0

    async def local_manifest(self, repository: str, digest: Digest) -> LocalManifest | None:
        rows = await self._local_rows(_MANIFEST + " AND digest = ?", (repository, str(digest)))
        return _manifest(rows[0]) if rows else None

    async def local_tag(self, repository: str, tag: str) -> Digest | None:
        rows = await self._local_rows(
            "SELECT digest FROM local_tags WHERE repository = ? AND tag = ?", (repository, tag)
        )
        return Digest.parse(rows[0][0]) if rows else None

    async def put_local_manifest(
        self,
        repository: str,
        manifest: LocalManifest,
        references: Sequence[Digest],
        tag: str | None,
        source: str,
        *,
        at: float | None = None,
    ) -> None:
        """`at`: the time of the push (default: now), as the gateway that took it says
        (a row imported from the shared bucket keeps its pusher's)."""
        now, digest = time.time() if at is None else at, str(manifest.digest)
        async with self._transaction() as db:
            await insert_blob(db, manifest.digest, manifest.size, manifest.media_type, now)
            await insert_manifest(db, manifest.digest, manifest.media_type, references)
            await db.execute(
                "INSERT OR IGNORE INTO sources (registry, repository, digest) VALUES (?, ?, ?)",
                (source, repository, digest),
            )
            await db.execute(
                "INSERT OR REPLACE INTO local_manifests VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (repository, digest, manifest.media_type, manifest.size, manifest.artifact_type,
                 manifest.annotations, _text(manifest.subject), now),
            )  # fmt: skip
            if tag is not None:
                await db.execute(
                    "INSERT OR REPLACE INTO local_tags VALUES (?, ?, ?, ?)",
                    (repository, tag, digest, now),
                )

    async def delete_local_manifest(
        self, repository: str, digest: Digest, source: str
    ) -> list[str] | None:
        key = (repository, str(digest))
        async with self._transaction() as db:
            cursor = await db.execute(
                "DELETE FROM local_manifests WHERE repository = ? AND digest = ?", key
            )
            if cursor.rowcount <= 0:
                return None
            tags = await db.execute_fetchall(
                "DELETE FROM local_tags WHERE repository = ? AND digest = ? RETURNING tag", key
            )
            await db.execute(
                "DELETE FROM sources WHERE registry = ? AND repository = ? AND digest = ?",
                (source, *key),
            )
            return sorted(str(r[0]) for r in tags)

    async def delete_local_tag(self, repository: str, tag: str) -> bool:
        async with self._transaction() as db:
            cursor = await db.execute(
                "DELETE FROM local_tags WHERE repository = ? AND tag = ?", (repository, tag)
            )
            return cursor.rowcount > 0

    async def local_tags(self, repository: str) -> list[str] | None:
        tags = await self._local_rows(
            "SELECT tag FROM local_tags WHERE repository = ? ORDER BY tag", (repository,)
        )
        if tags:
            return [str(r[0]) for r in tags]
        held = await self._local_rows(
            "SELECT 1 FROM local_manifests WHERE repository = ? UNION ALL"
            " SELECT 1 FROM local_blobs WHERE repository = ? LIMIT 1",
            (repository, repository),
        )
        return [] if held else None

    async def local_tag_rows(self) -> list[tuple[str, str, str]]:
        """(repository, tag, digest) of every local tag (`cache ls`)."""
        rows = await self._local_rows("SELECT repository, tag, digest FROM local_tags")
        return [(str(a), str(b), str(c)) for a, b, c in rows]

    async def local_tag_times(self) -> dict[tuple[str, str], tuple[Digest, float]]:
        """(repository, tag) → (digest, when tagged) of every local tag."""
        rows = await self._local_rows("SELECT repository, tag, digest, tagged_s FROM local_tags")
        return {(str(r), str(t)): (Digest.parse(d), float(s)) for r, t, d, s in rows}

    async def local_manifest_times(self) -> dict[tuple[str, Digest], float]:
        """(repository, digest) → when pushed, of every local manifest."""
        rows = await self._local_rows("SELECT repository, digest, added_s FROM local_manifests")
        return {(str(r), Digest.parse(d)): float(s) for r, d, s in rows}

    async def references_of(self, digest: Digest) -> list[Digest]:
        """What the manifest `digest` references (its config, layers, child manifests)."""
        rows = await self._local_rows(
            "SELECT child FROM refs WHERE parent = ? ORDER BY rowid", (str(digest),)
        )
        return [Digest.parse(r[0]) for r in rows]

    async def local_referrers(self, repository: str, subject: Digest) -> list[LocalManifest]:
        rows = await self._local_rows(
            _MANIFEST + " AND subject = ? ORDER BY added_s, digest", (repository, str(subject))
        )
        return [_manifest(r) for r in rows]

    async def local_repositories(self) -> list[str]:
        return [str(r[0]) for r in await self._local_rows(_REPOSITORIES)]

    async def local_usage(self) -> LocalUsage:
        repositories = len(await self._local_rows(_REPOSITORIES))
        manifests = await self._local_rows("SELECT COUNT(*) FROM local_manifests")
        tags = await self._local_rows("SELECT COUNT(*) FROM local_tags")
        blobs = await self._local_rows("SELECT COUNT(*) FROM local_blobs")
        content = await self._local_rows(_USAGE)
        return LocalUsage(repositories, int(manifests[0][0]), int(tags[0][0]),
                          int(blobs[0][0]), int(content[0][1]))  # fmt: skip


def _text(digest: Digest | None) -> str | None:
    return None if digest is None else str(digest)


def _manifest(row: Any) -> LocalManifest:
    digest, media_type, size, artifact_type, annotations, subject = row
    return LocalManifest(Digest.parse(digest), str(media_type), int(size), artifact_type,
                         annotations, Digest.parse(subject) if subject else None)  # fmt: skip
