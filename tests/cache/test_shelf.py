"""What the store holds, as answers: only whole files; index writes that fail do not fail
the answer; a full disk asks for room. On a real store and index."""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from appliance.cache.answers import Stored
from appliance.cache.shelf import Shelf
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import OCI_MANIFEST, OCTET_STREAM
from appliance.store.files import FileBlobStore
from appliance.store.index import SqliteIndex

DATA = b"layer" * 1000
DIGEST = Digest.of(DATA)


@dataclass
class Space:
    """Our own `SpaceKeeper` port, recording what it was told."""

    nudges: list[tuple[int, bool]] = field(default_factory=list)

    def nudge(self, *, added: int = 0, urgent: bool = False) -> None:
        self.nudges.append((added, urgent))


@dataclass
class Parts:
    shelf: Shelf
    files: FileBlobStore
    index: SqliteIndex
    space: Space


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[Parts]:
    files = FileBlobStore(tmp_path)
    files.prepare()
    index = await SqliteIndex.open(tmp_path / "index.sqlite")
    space = Space()
    yield Parts(Shelf(files, index, space), files, index, space)
    await index.close()


async def commit(files: FileBlobStore, data: bytes) -> None:
    temp = files.create_temp()
    temp.write(data)
    await files.commit(temp, Digest.of(data))


async def test_only_a_digest_with_a_row_and_a_whole_file_is_an_answer(parts: Parts) -> None:
    shelf, files, index = parts.shelf, parts.files, parts.index
    assert await shelf.stored(DIGEST, OCTET_STREAM) is None
    await commit(files, DATA)
    assert await shelf.stored(DIGEST, OCTET_STREAM) is None  # a file without its row
    await index.add_blob(DIGEST, len(DATA), None)
    whole = Stored(DIGEST, len(DATA), OCTET_STREAM, files.path_for(DIGEST))
    assert await shelf.stored(DIGEST, OCTET_STREAM) == whole
    assert await shelf.stored_manifest(DIGEST) is None  # a blob is not a manifest
    os.truncate(files.path_for(DIGEST), len(DATA) - 1)
    assert await shelf.stored(DIGEST, OCTET_STREAM) is None


async def test_a_stored_manifest_is_answered_with_its_media_type(parts: Parts) -> None:
    body = b'{"schemaVersion":2}'
    await commit(parts.files, body)
    await parts.index.add_manifest(Digest.of(body), len(body), OCI_MANIFEST, [], ("h", "r"))
    stored = await parts.shelf.stored_manifest(Digest.of(body))
    assert stored is not None and stored.media_type == OCI_MANIFEST


async def test_an_index_write_that_fails_is_logged_and_does_not_fail_the_answer(
    parts: Parts, caplog: pytest.LogCaptureFixture
) -> None:
    async def full() -> None:
        raise sqlite3.OperationalError("database or disk is full")

    await parts.shelf.record("tag", full())
    assert "index write-failed what=tag error=database or disk is full" in caplog.text


def test_stored_bytes_and_a_full_disk_are_told_to_the_space_keeper(
    parts: Parts, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    parts.shelf.added(123)
    no_space = OSError(errno.ENOSPC, "No space left on device")
    for _ in range(3):
        parts.shelf.disk_full(None, no_space)
    assert parts.space.nudges == [(123, False), (0, True), (0, True), (0, True)]
    assert caplog.text.count("store disk-full digest=- error=No space left on device") == 1
