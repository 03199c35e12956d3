"""Digests: a strict parser, and the verifier that hashes bytes as they stream past."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.oci.digest import Digest, DigestError


@given(st.text(max_size=140))
def test_digest_parser_is_strict(text: str) -> None:
    try:
        digest = Digest.parse(text)
    except DigestError:
        return
    assert str(digest) == text


def test_the_verifier_matches_only_the_bytes_of_its_digest_however_they_are_chunked() -> None:
    data = bytes(range(256)) * 100
    verifier = Digest.of(data).verifier()
    for start in range(0, len(data), 777):
        verifier.update(data[start : start + 777])
    assert verifier.matches() and verifier.size == len(data)
    tampered = data[:-1] + b"\x00"
    other = Digest.of(data).verifier()
    other.update(tampered)
    assert not other.matches() and other.actual() == Digest.of(tampered)


def test_sha512_digests_are_parsed_and_verified_with_their_own_algorithm() -> None:
    data = b"a layer"
    digest = Digest.parse("sha512:" + hashlib.sha512(data).hexdigest())
    assert digest == Digest.of(data, "sha512")
    verifier = digest.verifier()
    verifier.update(data)
    assert verifier.matches()
    for wrong in ("sha512:" + "a" * 64, "sha256:" + "A" * 64, "sha256:" + "a" * 63, "md5:ab"):
        with pytest.raises(DigestError):
            Digest.parse(wrong)
