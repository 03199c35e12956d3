"""Syncing a folder after a rename, on a real filesystem."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.kit.durable import fsync_dir


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_folder_is_synced_after_a_rename_and_no_descriptor_stays_open(tmp_path: Path) -> None:
    (tmp_path / "fill-1").write_bytes(b"blob")
    os.replace(tmp_path / "fill-1", tmp_path / "final")
    before = open_descriptors()
    for _ in range(100):
        fsync_dir(tmp_path)
    assert open_descriptors() == before
    assert (tmp_path / "final").read_bytes() == b"blob"


def test_only_a_folder_can_be_synced_as_one(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    before = open_descriptors()
    with pytest.raises(NotADirectoryError):
        fsync_dir(tmp_path / "file")
    with pytest.raises(FileNotFoundError):
        fsync_dir(tmp_path / "missing")
    assert open_descriptors() == before
