"""The content-addressed files, on a real filesystem."""

from __future__ import annotations

from pathlib import Path

from appliance.oci.digest import Digest
from appliance.store.files import FileBlobStore


async def test_commit_places_the_file_under_its_digest(tmp_path: Path) -> None:
    files = FileBlobStore(tmp_path)
    files.prepare()
    data = b"hello"
    temp = files.create_temp()
    temp.write(data)
    digest = Digest.of(data)
    path = await files.commit(temp, digest)
    assert path == tmp_path / "blobs" / "sha256" / digest.hex[:2] / digest.hex
    assert path.read_bytes() == data and files.size_of(digest) == 5
    assert list((tmp_path / "tmp").iterdir()) == []


def test_leftover_temp_files_are_removed_at_start(tmp_path: Path) -> None:
    files = FileBlobStore(tmp_path)
    files.prepare()
    files.create_temp().write(b"partial")
    assert FileBlobStore(tmp_path).prepare() == 1
    assert list((tmp_path / "tmp").iterdir()) == []
