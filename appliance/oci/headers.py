"""The registry's response headers the cache reads, parsed once at the adapter."""

from __future__ import annotations

from collections.abc import Mapping

from appliance.oci.digest import Digest, DigestError

DIGEST = "Docker-Content-Digest"


def announced_digest(headers: Mapping[str, str]) -> Digest | None:
    """The `Docker-Content-Digest` sent, None if none or not a digest."""
    value = headers.get(DIGEST)
    if not value:
        return None
    try:
        return Digest.parse(value.strip())
    except DigestError:
        return None


def announced_length(headers: Mapping[str, str]) -> int | None:
    """The `Content-Length` sent, None if none or not a number."""
    value = headers.get("Content-Length", "")
    return int(value) if value.isdigit() else None


def content_type(headers: Mapping[str, str]) -> str:
    """The `Content-Type` sent, as sent ("" if none)."""
    return headers.get("Content-Type", "")


def ratelimit(value: str | None) -> tuple[int, int | None] | None:
    """Docker Hub's `ratelimit-remaining`/`-limit` values: `76;w=21600` → (76, 21600);
    None if absent or not a count (digits only)."""
    if not value:
        return None
    count, _, params = value.partition(";")
    if not count.strip().isdigit():
        return None
    amount = int(count.strip())
    window = None
    for param in params.split(";"):
        name, _, text = param.strip().partition("=")
        if name == "w" and text.isdigit():
            window = int(text)
    return amount, window


class Announced:
    """What a response's headers announce, typed: for any reply with `headers`."""

    __slots__ = ()
    headers: Mapping[str, str]

    @property
    def digest(self) -> Digest | None:
        return announced_digest(self.headers)

    @property
    def length(self) -> int | None:
        return announced_length(self.headers)

    @property
    def content_type(self) -> str:
        return content_type(self.headers)
