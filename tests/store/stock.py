"""A real store for the store tests: files on disk and the SQLite index, with ways to
stock it with blobs and manifests of a given age and to read back what it holds."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

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
