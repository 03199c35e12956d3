"""A real store for the store tests: files on disk and the SQLite index, with ways to
stock it with blobs and manifests of a given age (or files without rows) and to read back
what it holds; `Walk` holds a reconciliation inside one re-hash."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.oci.digest import Digest
from appliance.oci.manifest import references
from appliance.oci.mediatypes import OCI_INDEX, OCI_MANIFEST
from appliance.store.files import FileBlobStore
from appliance.store.index import SqliteIndex
from appliance.store.reconcile import INDEX_NAME


@dataclass
class Store:
    root: Path
    files: FileBlobStore
    index: SqliteIndex

    async def blob(self, data: bytes, when: float = 1000.0) -> str:
        digest = await self._file(data)
        await self.index.add_blob(digest, len(data), None)
        self.age(str(digest), when)
        return str(digest)

    async def manifest(
        self, children: list[str], repo: str = "a", when: float = 1000.0, index: bool = False
    ) -> str:
        if index:
            doc: dict[str, object] = {
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [{"digest": c, "size": 1} for c in children],
            }
        else:
            doc = {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": {"digest": children[0], "size": 1},
                "layers": [{"digest": c, "size": 1} for c in children[1:]],
            }
        body = json.dumps(doc).encode()
        digest = await self._file(body)
        media_type = OCI_INDEX if index else OCI_MANIFEST
        await self.index.add_manifest(
            digest, len(body), media_type, references(body), ("ghcr.io", repo)
        )
        self.age(str(digest), when)
        return str(digest)

    async def _file(self, data: bytes) -> Digest:
        temp = self.files.create_temp()
        temp.write(data)
        digest = Digest.of(data)
        await self.files.commit(temp, digest)
        return digest

    def age(self, digest: str, when: float) -> None:
        with contextlib.closing(sqlite3.connect(self.root / INDEX_NAME)) as db, db:
            db.execute("UPDATE blobs SET last_access_s = ? WHERE digest = ?", (when, digest))

    def rows(self) -> set[str]:
        with contextlib.closing(sqlite3.connect(self.root / INDEX_NAME)) as db:
            return {r[0] for r in db.execute("SELECT digest FROM blobs")}

    def on_disk(self) -> set[str]:
        return {str(d) for _, d in self.files.walk() if d is not None}


def unindexed(files: FileBlobStore, data: bytes) -> Digest:
    """A blob file without a row (the index was lost)."""
    digest = Digest.of(data)
    path = files.path_for(digest)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return digest


class Walk:
    """Holds reconciliation inside its re-hash of one digest (`at`, or the first it
    hashes), after hashing it, in its thread, until the test has done what happens
    meanwhile (`go_on`): deterministic, no sleeps."""

    def __init__(
        self, files: FileBlobStore, monkeypatch: pytest.MonkeyPatch, at: Digest | None = None
    ) -> None:
        self.at = at
        self.hashed: list[Digest] = []
        self.inside = threading.Event()
        self.go_on = threading.Event()
        real = files.hashes_to_name

        def hashes_to_name(path: Path, digest: Digest) -> bool:
            good = real(path, digest)
            self.hashed.append(digest)
            if at in (digest, None) and not self.inside.is_set():
                self.inside.set()
                assert self.go_on.wait(30), "the test never let reconciliation go on"
            return good

        monkeypatch.setattr(files, "hashes_to_name", hashes_to_name)

    async def held(self) -> None:
        assert await asyncio.to_thread(self.inside.wait, 30), "reconciliation never got there"
