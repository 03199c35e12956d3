"""The content-addressed files, on a real filesystem."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

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


@contextlib.contextmanager
def taken_by_a_socket(number: int) -> Iterator[None]:
    """File descriptor `number` (closed) refers to one end of a socket pair meanwhile."""
    left, right = socket.socketpair()
    with left, right:
        if left.fileno() != number:
            os.dup2(left.fileno(), number)
        try:
            yield
        finally:
            if left.fileno() != number:
                os.close(number)


@pytest.mark.parametrize("failing", ["fsync", "replace"])
async def test_a_failed_commit_closes_once_and_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    files = FileBlobStore(tmp_path)
    files.prepare()
    temp = files.create_temp()
    temp.write(b"hello")
    number = temp.fd

    def broken(*_args: object) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, failing, broken)
    with pytest.raises(OSError, match="Input/output error"):
        await files.commit(temp, Digest.of(b"hello"))
    monkeypatch.undo()
    # The closed number goes to the next open, here a socket (a client's, say): the
    # caller's clean-up after the failure must not close it.
    with taken_by_a_socket(number):
        files.discard(temp)
        assert stat.S_ISSOCK(os.fstat(number).st_mode)
    assert list((tmp_path / "tmp").iterdir()) == []
    assert list(files.walk()) == []
