"""Content digests (`sha256:<64 hex>`) and an incremental verifier."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

_HEX_LENGTH = {"sha256": 64, "sha512": 128}
_PATTERN = re.compile(r"(sha256|sha512):([0-9a-f]+)")  # fullmatch


class DigestError(ValueError):
    """Not a digest this registry cache can verify."""


@dataclass(frozen=True, slots=True, order=True)
class Digest:
    algorithm: str
    hex: str

    @classmethod
    def parse(cls, text: str) -> Digest:
        match = _PATTERN.fullmatch(text)
        if match is None or len(match.group(2)) != _HEX_LENGTH[match.group(1)]:
            raise DigestError(f"invalid digest {text[:80]!r}: expected sha256:<64 lowercase hex>")
        return cls(match.group(1), match.group(2))

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())

    def verifier(self) -> DigestVerifier:
        return DigestVerifier(self)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"


class DigestVerifier:
    """Hashes bytes as they stream past; `matches()` once they are all in."""

    def __init__(self, expected: Digest) -> None:
        self.expected = expected
        self._hash = hashlib.new(expected.algorithm)
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self.size += len(chunk)

    def actual(self) -> Digest:
        return Digest(self.expected.algorithm, self._hash.hexdigest())

    def matches(self) -> bool:
        return self.actual() == self.expected
