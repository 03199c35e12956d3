"""The registry response headers the cache reads: digest, length and type."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from appliance.oci.digest import Digest
from appliance.oci.headers import announced_digest, announced_length, content_type

HEX = "b" * 64


def test_the_announced_digest_is_read_whatever_the_header_spelling() -> None:
    headers = CIMultiDict({"docker-content-digest": f" sha256:{HEX} "})
    assert announced_digest(headers) == Digest("sha256", HEX)


@pytest.mark.parametrize("value", [None, "", "sha256:abc", "SHA256:" + HEX, "md5:" + HEX[:32]])
def test_a_missing_or_invalid_digest_is_none(value: str | None) -> None:
    headers = {} if value is None else {"Docker-Content-Digest": value}
    assert announced_digest(headers) is None


def test_the_announced_length_is_a_count_of_bytes_or_none() -> None:
    assert announced_length({"Content-Length": "0"}) == 0
    assert announced_length({"Content-Length": "52428800"}) == 52428800
    for value in ("", "-1", "12a", "1.5", "0x10"):
        assert announced_length({"Content-Length": value}) is None
    assert announced_length({}) is None


def test_the_content_type_is_kept_as_sent() -> None:
    sent = "application/vnd.oci.image.manifest.v1+json; charset=utf-8"
    assert content_type(CIMultiDict({"content-type": sent})) == sent
    assert content_type({}) == ""
