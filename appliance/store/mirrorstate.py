"""The managed mirror's rows (schema 5): `SqliteIndex` inherits them, sharing its
connection and write lock. A tag moves in one transaction with its history row, its
backup ref and the pruning of old backups; the move happens only if the tag still
serves what the mover saw (compare-and-swap), so a sync never overwrites a rollback
that landed meanwhile. Every write bumps `mirror_state.generation`: a running regcache
reloads its mappings when another process (`regcache mirror …`) changed them."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiosqlite

from appliance.mirror.records import (
    ANY_PIN,
    AnyPin,
    BudgetSeen,
    Check,
    EntryRun,
    MirroredTag,
    Move,
    Place,
    Request,
)
from appliance.oci.digest import Digest

_SELECT_TAGS = (
    "SELECT registry, repository, tag, entry, digest, media_type, size, moved_s, access, pin,"
    " backup_of FROM mirror_tags ORDER BY 1, 2, 3"
)
_SERVING = "SELECT digest FROM mirror_tags WHERE registry = ? AND repository = ? AND tag = ?"
_SERVING_AND_PIN = (
    "SELECT digest, pin FROM mirror_tags WHERE registry = ? AND repository = ? AND tag = ?"
)

_TAKEN = (
    "SELECT digest, backup_of FROM mirror_tags WHERE registry = ? AND repository = ? AND tag = ?"
)
_JOURNALLED = {
    "mirror_tags": "SELECT * FROM mirror_tags",
    "mirror_history": "SELECT * FROM mirror_history ORDER BY rowid",
    "mirror_added": "SELECT * FROM mirror_added",
    "mirror_referrers": "SELECT * FROM mirror_referrers",
    "local_blobs": "SELECT * FROM local_blobs",
    "local_manifests": "SELECT * FROM local_manifests",
    "local_tags": "SELECT * FROM local_tags",
}
_RESTORE = {
    "mirror_tags": "INSERT OR IGNORE INTO mirror_tags VALUES ({marks})",
    "mirror_history": "INSERT INTO mirror_history VALUES ({marks})",
    "mirror_added": "INSERT OR IGNORE INTO mirror_added VALUES ({marks})",
    "mirror_referrers": "INSERT OR IGNORE INTO mirror_referrers VALUES ({marks})",
    "local_blobs": "INSERT OR IGNORE INTO local_blobs VALUES ({marks})",
    "local_manifests": "INSERT OR IGNORE INTO local_manifests VALUES ({marks})",
    "local_tags": "INSERT OR IGNORE INTO local_tags VALUES ({marks})",
}
_FORGET = {
    "mirror_checks": "DELETE FROM mirror_checks WHERE entry = ?",
    "mirror_runs": "DELETE FROM mirror_runs WHERE entry = ?",
}
_WRITE_TAG = "INSERT OR REPLACE INTO mirror_tags VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_BUMP = "UPDATE mirror_state SET generation = generation + 1"


class MirrorState:
    _db: aiosqlite.Connection

    def _transaction(self) -> AbstractAsyncContextManager[aiosqlite.Connection]:
        raise NotImplementedError

    async def _select(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        async with self._db.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def mirror_rows(self, tables: Sequence[str]) -> dict[str, list[list[Any]]]:
        """Every row of the named mirror tables (`mirrorjournal.save`)."""
        out: dict[str, list[list[Any]]] = {}
        for table in tables:
            if table not in _JOURNALLED:
                raise ValueError(f"not a journalled table: {table}")
            out[table] = [list(r) for r in await self._select(_JOURNALLED[table])]
        return out

    async def restore_mirror_rows(self, tables: dict[str, list[tuple[Any, ...]]]) -> int:
        """Put journalled rows back (those already present stay); rows written."""
        written = 0
        async with self._transaction() as db:
            for table, rows in tables.items():
                if rows:
                    marks = ", ".join("?" * len(rows[0]))
                    cursor = await db.executemany(_RESTORE[table].format(marks=marks), rows)
                    written += max(cursor.rowcount, 0)
            await db.execute(_BUMP)
        return written

    async def mirror_generation(self) -> int:
        rows = await self._select("SELECT generation FROM mirror_state")
        return int(rows[0][0]) if rows else 0

    async def mirrored_tags(self) -> list[MirroredTag]:
        rows = await self._select(_SELECT_TAGS)
        return [_tag(row) for row in rows]

    async def move_tag(
        self,
        tag: MirroredTag,
        reason: str,
        *,
        expect: Digest | None,
        backup: str | None,
        keep_backups: int,
        expect_pin: Digest | AnyPin | None = ANY_PIN,
    ) -> Move | None:
        """Serve `tag` (its digest, pin and access) if the tag still serves `expect` (None:
        is not mirrored yet) and, if given, is still pinned at `expect_pin` (a pin set
        while a sync copied wins); its old digest is kept as the `backup` ref, and backups
        of the tag beyond the newest `keep_backups` go. None if the tag changed meanwhile."""
        place = tag.place
        async with self._transaction() as db:
            async with db.execute(_SERVING_AND_PIN, _key(place)) as cursor:
                row = await cursor.fetchone()
            current = None if row is None else Digest.parse(row[0])
            if current != expect:
                return None
            if expect_pin is not ANY_PIN and row is not None and _digest(row[1]) != expect_pin:
                return None
            if current is None or current == tag.digest or backup is None or not keep_backups:
                backup = None  # nothing to keep (the history row must not name a ref)
            else:
                backup = await _write_backup(db, tag, current, backup)
            await db.execute(_WRITE_TAG, _tag_values(tag))
            move = Move(place, current, tag.digest, tag.moved_s, reason, backup)
            await db.execute(
                "INSERT INTO mirror_history VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (*_key(place), _text(current), str(tag.digest), tag.moved_s, reason, backup),
            )
            await _prune_backups(db, place, keep_backups)
            await db.execute(_BUMP)
        return move

    async def keep_referrers(
        self, registry: str, repository: str, subject: Digest, digests: Sequence[Digest]
    ) -> None:
        """Signatures and attestations of a mirrored `subject`: kept like it."""
        async with self._transaction() as db:
            await db.executemany(
                "INSERT OR IGNORE INTO mirror_referrers VALUES (?, ?, ?, ?)",
                [(registry, repository, str(subject), str(d)) for d in digests],
            )

    async def mirror_referrers_of(
        self, registry: str, repository: str, subject: Digest
    ) -> list[Digest]:
        rows = await self._select(
            "SELECT digest FROM mirror_referrers WHERE registry = ? AND repository = ?"
            " AND subject = ? ORDER BY digest", (registry, repository, str(subject)),
        )  # fmt: skip
        return [Digest.parse(r[0]) for r in rows]

    async def mirror_moves_since(self, after: int) -> list[tuple[int, Move]]:
        """Moves written after history row `after` (every process's), oldest first."""
        rows = await self._select(
            "SELECT rowid, registry, repository, tag, old_digest, new_digest, moved_s, reason,"
            " backup FROM mirror_history WHERE rowid > ? ORDER BY rowid",
            (after,),
        )
        return [
            (int(rowid), Move(Place(r, p, t), _digest(old), Digest.parse(new), float(at),
                              str(reason), backup))
            for rowid, r, p, t, old, new, at, reason, backup in rows
        ]  # fmt: skip

    async def set_mirror_pin(self, place: Place, pin: Digest | None) -> bool:
        """Hold a mirrored tag at `pin` (None: let syncs move it again); False if it is
        not mirrored."""
        async with self._transaction() as db:
            cursor = await db.execute(
                "UPDATE mirror_tags SET pin = ? WHERE registry = ? AND repository = ? AND tag = ?"
                " AND backup_of IS NULL",
                (_text(pin), *_key(place)),
            )
            await db.execute(_BUMP)
            return cursor.rowcount > 0

    async def mirror_history(self, place: Place) -> list[Move]:
        """A tag's moves, oldest first."""
        rows = await self._select(
            "SELECT old_digest, new_digest, moved_s, reason, backup FROM mirror_history"
            " WHERE registry = ? AND repository = ? AND tag = ? ORDER BY moved_s, rowid",
            _key(place),
        )
        return [
            Move(place, _digest(old), Digest.parse(new), float(at), str(reason), backup)
            for old, new, at, reason, backup in rows
        ]

    async def record_check(self, check: Check) -> None:
        async with self._transaction() as db:
            await db.execute(
                "INSERT OR REPLACE INTO mirror_checks VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (*_key(check.place), check.entry, _text(check.upstream), check.checked_s,
                 int(check.gone), check.error),
            )  # fmt: skip

    async def mirror_checks(self) -> list[Check]:
        rows = await self._select(
            "SELECT registry, repository, tag, entry, upstream_digest, checked_s, gone, error"
            " FROM mirror_checks"
        )
        return [
            Check(Place(r, p, t), entry, _digest(up), float(at), bool(gone), error)
            for r, p, t, entry, up, at, gone, error in rows
        ]

    async def record_run(self, run: EntryRun) -> None:
        async with self._transaction() as db:
            await db.execute(
                "INSERT OR REPLACE INTO mirror_runs VALUES (?, ?)",
                (run.entry, json.dumps(dataclasses.asdict(run))),
            )

    async def mirror_runs(self) -> list[EntryRun]:
        rows = await self._select("SELECT run FROM mirror_runs ORDER BY entry")
        return [EntryRun(**json.loads(run)) for (run,) in rows]

    async def record_budget(self, budget: BudgetSeen) -> None:
        async with self._transaction() as db:
            await db.execute(
                "INSERT OR REPLACE INTO mirror_budgets VALUES (?, ?, ?, ?, ?, ?)",
                dataclasses.astuple(budget),
            )

    async def mirror_budgets(self) -> list[BudgetSeen]:
        rows = await self._select("SELECT * FROM mirror_budgets ORDER BY 1, 2")
        return [BudgetSeen(str(r), str(c), int(n), m, w, float(s)) for r, c, n, m, w, s in rows]

    async def added_entries(self) -> list[tuple[str, str]]:
        """(source, access) of entries `regcache mirror add` added."""
        rows = await self._select("SELECT source, access FROM mirror_added ORDER BY added_s")
        return [(str(s), str(a)) for s, a in rows]

    async def forget_entry(self, source: str) -> int:
        """An entry's tags, backup refs, checks, run and (if `mirror add` added it) the
        entry itself: gone, their content left to eviction; the history stays. Tags."""
        async with self._transaction() as db:
            cursor = await db.execute("DELETE FROM mirror_tags WHERE entry = ?", (source,))
            forgotten = max(cursor.rowcount, 0)
            for table in ("mirror_checks", "mirror_runs"):
                await db.execute(_FORGET[table], (source,))
            await db.execute("DELETE FROM mirror_added WHERE source = ?", (source,))
            await db.execute(
                "DELETE FROM mirror_referrers WHERE NOT EXISTS (SELECT 1 FROM mirror_tags t"
                " WHERE t.registry = mirror_referrers.registry"
                " AND t.repository = mirror_referrers.repository"
                " AND t.digest = mirror_referrers.subject)"
            )
            await db.execute(_BUMP)
        return forgotten

    async def add_entry(self, source: str, access: str) -> None:
        async with self._transaction() as db:
            await db.execute(
                "INSERT OR REPLACE INTO mirror_added VALUES (?, ?, ?)",
                (source, access, time.time()),
            )
            await db.execute(_BUMP)

    async def ask(self, action: str, entries: tuple[str, ...]) -> int:
        async with self._transaction() as db:
            cursor = await db.execute(
                "INSERT INTO mirror_requests (action, entries, asked_s) VALUES (?, ?, ?)",
                (action, json.dumps(entries), time.time()),
            )
            await db.execute(_BUMP)
            return int(cursor.lastrowid or 0)

    async def next_request(self) -> Request | None:
        """The oldest request not yet started, marked started."""
        # Read first: asked every second, a write transaction each time would be wasted.
        if not await self._select("SELECT 1 FROM mirror_requests WHERE started_s IS NULL"):
            return None
        async with self._transaction() as db:
            async with db.execute(
                "SELECT id FROM mirror_requests WHERE started_s IS NULL ORDER BY id LIMIT 1"
            ) as cursor:
                row = await cursor.fetchone()
            if row is None:
                return None
            await db.execute(
                "UPDATE mirror_requests SET started_s = ? WHERE id = ?", (time.time(), row[0])
            )
        return await self.request(int(row[0]))

    async def withdraw_request(self, request_id: int) -> bool:
        """Drop a request no process took (a regcache started later must not act on a
        stale one); False if one took it meanwhile."""
        async with self._transaction() as db:
            cursor = await db.execute(
                "DELETE FROM mirror_requests WHERE id = ? AND started_s IS NULL", (request_id,)
            )
            return cursor.rowcount > 0

    async def finish_request(self, request_id: int, result: str) -> None:
        async with self._transaction() as db:
            await db.execute(
                "UPDATE mirror_requests SET done_s = ?, result = ? WHERE id = ?",
                (time.time(), result, request_id),
            )
            # Requests answered a day ago are read by nobody.
            await db.execute("DELETE FROM mirror_requests WHERE done_s < ?", (time.time() - 86400,))

    async def request(self, request_id: int) -> Request | None:
        rows = await self._select(
            "SELECT id, action, entries, asked_s, started_s, done_s, result"
            " FROM mirror_requests WHERE id = ?",
            (request_id,),
        )
        if not rows:
            return None
        i, action, entries, asked, started, done, result = rows[0]
        return Request(int(i), str(action), tuple(json.loads(entries)), asked, started, done,
                       result)  # fmt: skip


async def _write_backup(
    db: aiosqlite.Connection, tag: MirroredTag, old: Digest, name: str
) -> str | None:
    """The old digest kept as the ref `name` (`name.1`, `.2`… if taken by another)."""
    async with db.execute(
        "SELECT media_type, size FROM mirror_tags m WHERE m.digest = ? LIMIT 1", (str(old),)
    ) as cursor:
        row = await cursor.fetchone()
    if row is None:
        return None
    for attempt in range(100):
        candidate = name if attempt == 0 else f"{name}.{attempt}"
        key = (tag.place.registry, tag.place.repository, candidate)
        async with db.execute(_TAKEN, key) as c:
            taken = await c.fetchone()
        # Reused only if it is this tag's backup of the same digest: a mirrored tag (or
        # another tag's backup) that happens to bear the name is never overwritten.
        if taken is not None and tuple(taken) != (str(old), tag.place.tag):
            continue
        backup = dataclasses.replace(
            tag, place=Place(*key), digest=old, media_type=str(row[0]), size=int(row[1]),
            pin=None, backup_of=tag.place.tag,
        )  # fmt: skip
        await db.execute(_WRITE_TAG, _tag_values(backup))
        return candidate
    return None


async def _prune_backups(db: aiosqlite.Connection, place: Place, keep: int) -> None:
    await db.execute(
        "DELETE FROM mirror_tags WHERE registry = ? AND repository = ? AND backup_of = ?"
        " AND tag NOT IN (SELECT tag FROM mirror_tags WHERE registry = ? AND repository = ?"
        " AND backup_of = ? ORDER BY moved_s DESC, tag DESC LIMIT ?)",
        (*_key(place), *_key(place), keep),
    )


def _key(place: Place) -> tuple[str, str, str]:
    return (place.registry, place.repository, place.tag)


def _text(digest: Digest | None) -> str | None:
    return None if digest is None else str(digest)


def _digest(text: str | None) -> Digest | None:
    return None if text is None else Digest.parse(text)


def _tag(row: Sequence[Any]) -> MirroredTag:
    registry, repository, tag, entry, digest, media_type, size, moved, access, pin, of = row
    return MirroredTag(
        Place(registry, repository, tag), str(entry), Digest.parse(digest), str(media_type),
        int(size), float(moved), str(access), _digest(pin), of,
    )  # fmt: skip


def _tag_values(tag: MirroredTag) -> tuple[object, ...]:
    return (*_key(tag.place), tag.entry, str(tag.digest), tag.media_type, tag.size,
            tag.moved_s, tag.access, _text(tag.pin), tag.backup_of)  # fmt: skip
