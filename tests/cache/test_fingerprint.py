"""Credential fingerprints: keyed per install, any header bytes."""

from __future__ import annotations

import hashlib
from pathlib import Path

from appliance.cache.fingerprint import Fingerprints


def test_fingerprints_are_keyed_per_install(tmp_path: Path) -> None:
    one = Fingerprints.for_install(tmp_path)
    assert Fingerprints.for_install(tmp_path)("Basic x") == one("Basic x")  # kept
    (tmp_path / "other").mkdir()
    assert Fingerprints.for_install(tmp_path / "other")("Basic x") != one("Basic x")
    assert one("Basic x") != hashlib.sha256(b"Basic x").hexdigest()[:32]  # no bare hash
    assert one(None) == "" == one("")
    assert (tmp_path / "fingerprint.key").stat().st_mode & 0o777 == 0o600


def test_fingerprints_take_any_header_bytes_and_replace_an_empty_key(tmp_path: Path) -> None:
    (tmp_path / "fingerprint.key").write_bytes(b"")
    fingerprints = Fingerprints.for_install(tmp_path)
    assert len((tmp_path / "fingerprint.key").read_bytes()) == 32
    assert len(fingerprints(b"Basic \xff\xfe".decode("utf-8", "surrogateescape"))) == 32
