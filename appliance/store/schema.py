"""The index's schema: migrations keyed by `PRAGMA user_version`, each run once, in
order, inside a transaction (a new table or column is a new entry at the end), and the
row inserts more than one part of the index makes."""

from __future__ import annotations

from collections.abc import Sequence

import aiosqlite

from appliance.config.model import StartupError
from appliance.oci.digest import Digest

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
    # 5: the managed mirror (issue #16). `mirror_tags`: what a mirrored tag serves (and
    # its backup refs), kept whatever the size bound says; `mirror_history`: every move;
    # `mirror_checks`: upstream's last answer per tag; `mirror_runs`: each entry's last
    # run; `mirror_budgets`: rate-limit budgets seen; `mirror_referrers`: signatures and
    # attestations kept with a mirrored image; `mirror_added`: entries added with
    # `regcache mirror add`; `mirror_requests`: what the CLI asks the running process;
    # `mirror_state`: a generation the CLI bumps so the process reloads its mappings.
    """
    CREATE TABLE mirror_tags (
        registry TEXT NOT NULL,
        repository TEXT NOT NULL,
        tag TEXT NOT NULL,
        entry TEXT NOT NULL,
        digest TEXT NOT NULL,
        media_type TEXT NOT NULL,
        size INTEGER NOT NULL,
        moved_s REAL NOT NULL,
        access TEXT NOT NULL,
        pin TEXT,
        backup_of TEXT,
        PRIMARY KEY (registry, repository, tag)
    );
    CREATE INDEX mirror_tags_by_digest ON mirror_tags (digest);
    CREATE TABLE mirror_history (
        registry TEXT NOT NULL,
        repository TEXT NOT NULL,
        tag TEXT NOT NULL,
        old_digest TEXT,
        new_digest TEXT NOT NULL,
        moved_s REAL NOT NULL,
        reason TEXT NOT NULL,
        backup TEXT
    );
    CREATE INDEX mirror_history_by_tag ON mirror_history (registry, repository, tag);
    CREATE TABLE mirror_checks (
        registry TEXT NOT NULL,
        repository TEXT NOT NULL,
        tag TEXT NOT NULL,
        entry TEXT NOT NULL,
        upstream_digest TEXT,
        checked_s REAL NOT NULL,
        gone INTEGER NOT NULL DEFAULT 0,
        error TEXT,
        PRIMARY KEY (registry, repository, tag)
    );
    CREATE TABLE mirror_runs (entry TEXT PRIMARY KEY, run TEXT NOT NULL);
    CREATE TABLE mirror_budgets (
        registry TEXT NOT NULL,
        credential TEXT NOT NULL,
        remaining INTEGER NOT NULL,
        max INTEGER,
        window_s INTEGER,
        seen_s REAL NOT NULL,
        PRIMARY KEY (registry, credential)
    );
    CREATE TABLE mirror_added (source TEXT PRIMARY KEY, access TEXT NOT NULL, added_s REAL);
    CREATE TABLE mirror_requests (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        action TEXT NOT NULL,
        entries TEXT NOT NULL,
        asked_s REAL NOT NULL,
        started_s REAL,
        done_s REAL,
        result TEXT
    );
    CREATE TABLE mirror_referrers (
        registry TEXT NOT NULL,
        repository TEXT NOT NULL,
        subject TEXT NOT NULL,
        digest TEXT NOT NULL,
        PRIMARY KEY (registry, repository, subject, digest)
    );
    CREATE TABLE mirror_state (generation INTEGER NOT NULL);
    INSERT INTO mirror_state VALUES (0);
    """,
    # 6: the local registry (issue #17): blobs pushed or mounted into each repository,
    # its manifests (with what the referrers API answers) and tags. All of it is kept
    # whatever the size bound says; a blob's file and row are the store's own.
    """
    CREATE TABLE local_blobs (
        repository TEXT NOT NULL,
        digest TEXT NOT NULL,
        size INTEGER NOT NULL,
        added_s REAL NOT NULL,
        PRIMARY KEY (repository, digest)
    );
    CREATE TABLE local_manifests (
        repository TEXT NOT NULL,
        digest TEXT NOT NULL,
        media_type TEXT NOT NULL,
        size INTEGER NOT NULL,
        artifact_type TEXT,
        annotations TEXT,
        subject TEXT,
        added_s REAL NOT NULL,
        PRIMARY KEY (repository, digest)
    );
    CREATE INDEX local_manifests_by_subject ON local_manifests (repository, subject);
    CREATE TABLE local_tags (
        repository TEXT NOT NULL,
        tag TEXT NOT NULL,
        digest TEXT NOT NULL,
        tagged_s REAL NOT NULL,
        PRIMARY KEY (repository, tag)
    );
    """,
)


async def schema_version(db: aiosqlite.Connection) -> int:
    async with db.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


class NewerIndex(StartupError):
    """The index was written by a newer regcache: this one refuses it rather than run
    on rows it does not know (a downgrade); nothing is changed."""


def check_version(version: int) -> None:
    """NewerIndex if schema `version` is past what this regcache knows."""
    if version > len(_MIGRATIONS):
        raise NewerIndex(
            f"the store's index has schema version {version}, and this regcache knows "
            f"versions up to {len(_MIGRATIONS)}: a newer regcache wrote it. Start that "
            "version again (the store and the index were not changed)"
        )


async def migrate(db: aiosqlite.Connection) -> None:
    """Bring the schema up to the newest version; NewerIndex if it is past that."""
    version = await schema_version(db)
    check_version(version)
    for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
        await db.executescript(
            f"BEGIN IMMEDIATE; {script}; PRAGMA user_version = {number}; COMMIT;"
        )


async def insert_blob(
    db: aiosqlite.Connection, digest: Digest, size: int, media_type: str | None, now: float
) -> None:
    await db.execute(
        "INSERT INTO blobs (digest, size, media_type, created_s, last_access_s)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (digest) DO NOTHING",
        (str(digest), size, media_type, now, now),
    )


async def insert_manifest(
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
