"""Credential fingerprints: all regcache keeps of a client's `Authorization` header.

Verdicts, negative-cache keys and log lines name a credential by an HMAC-SHA256 keyed
with a per-install secret (`<state_dir>/fingerprint.key`, 0600), so that a fingerprint
seen in a log is no dictionary oracle for a weak Basic password (issue #13).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
from pathlib import Path

log = logging.getLogger(__name__)

KEY_FILE = "fingerprint.key"
_KEY_BYTES = 32


class Fingerprints:
    """`fingerprints(authorization)`: 32 hex characters, or "" for no credentials."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def __call__(self, authorization: str | None) -> str:
        if not authorization:
            return ""
        # aiohttp decodes header bytes that are not UTF-8 as surrogates: keep them.
        value = authorization.encode("utf-8", "surrogateescape")
        return hmac.new(self._key, value, hashlib.sha256).hexdigest()[:32]

    @classmethod
    def for_install(cls, state_dir: Path) -> Fingerprints:
        """Keyed with the install's secret, created on first use."""
        return cls(_install_key(state_dir / KEY_FILE))


def _install_key(path: Path) -> bytes:
    try:
        key: bytes | None = path.read_bytes()
    except FileNotFoundError:
        key = None
    if key is not None and len(key) == _KEY_BYTES:
        return key
    if key is not None:  # empty or damaged: a weak key is worse than a new one
        log.warning("fingerprint key-replaced path=%s reason=wrong-length", path)
    fresh = secrets.token_bytes(_KEY_BYTES)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, fresh)
        os.fsync(fd)
    finally:
        os.close(fd)
    if key is not None:
        os.replace(temp, path)
        return fresh
    try:
        os.link(temp, path)  # another process may have created it meanwhile: theirs wins
    except FileExistsError:
        return path.read_bytes()
    finally:
        temp.unlink()
    return fresh
