"""The distribution API paths regcache serves itself; everything else passes through."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from appliance.oci.digest import Digest, DigestError
from appliance.oci.names import InvalidName, check_repository, parse_reference

_ROUTE = re.compile(r"/v2/(?P<name>.+)/(?P<kind>manifests|blobs|referrers)/(?P<ref>[^/]+)", re.S)
# Writes: a manifest put or deleted; a blob upload started, continued, finished or
# cancelled (a mount is a start); a blob deleted.
_WRITE = re.compile(r"/v2/(?P<name>.+)/(?:manifests/[^/]+|blobs/uploads/[^/]*|blobs/[^/]+)", re.S)
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_PLAIN = re.compile(r"[\w.~:@!$&'()*+,;=/-]*", re.ASCII)
"""A path with no escape, backslash or control character: only dot segments can be bad."""


class Kind(Enum):
    MANIFEST = "manifests"
    BLOB = "blobs"
    REFERRERS = "referrers"


@dataclass(frozen=True, slots=True)
class Route:
    kind: Kind
    repository: str
    reference: str | Digest
    """A tag or digest for manifests; always a digest for blobs and referrers."""


class RouteError(ValueError):
    """A cacheable path with an invalid name or reference; `code` is the registry error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def check_path(raw_path: str) -> None:
    """Refuse a request path (as sent, still percent-encoded; no query) that a server
    could read as another path: dot segments, an encoded `/` or `\\`, control
    characters, malformed escapes. Such a path never reaches the store or upstream.

    RouteError says which part is bad: the digest of a blob or referrers route
    (DIGEST_INVALID), a manifest reference (MANIFEST_INVALID), else the name."""
    segments = raw_path.split("/")
    if _PLAIN.fullmatch(raw_path) and not any(s in (".", "..") for s in segments):
        return  # nearly every request: spared decoding each segment
    for i, segment in enumerate(segments):
        decoded = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), segment)
        bad = (
            decoded in (".", "..")
            or _BAD_ESCAPE.search(segment) is not None
            or any(c in "/\\" or ord(c) < 0x20 or ord(c) == 0x7F for c in decoded)
        )
        if not bad:
            continue
        kind = segments[-2] if len(segments) > 3 and i == len(segments) - 1 else ""
        if kind in ("blobs", "referrers") or (kind == "manifests" and ":" in decoded):
            raise RouteError("DIGEST_INVALID", f"invalid digest in path {raw_path[:120]!r}")
        if kind == "manifests":
            raise RouteError("MANIFEST_INVALID", f"invalid reference in path {raw_path[:120]!r}")
        raise RouteError("NAME_INVALID", f"invalid path {raw_path[:120]!r}")


def parse_route(path: str) -> Route | None:
    """The cacheable route of `path` (decoded, after `check_path`), or None for paths to
    pass through unchanged."""
    match = _ROUTE.fullmatch(path)
    if match is None:
        return None
    kind = Kind(match.group("kind"))
    try:
        repository = check_repository(match.group("name"))
    except InvalidName as e:
        raise RouteError("NAME_INVALID", str(e)) from e
    ref = match.group("ref")
    if kind is Kind.MANIFEST:
        try:
            return Route(kind, repository, parse_reference(ref))
        except InvalidName as e:
            raise RouteError("MANIFEST_INVALID", str(e)) from e
    try:
        return Route(kind, repository, Digest.parse(ref))
    except DigestError as e:
        raise RouteError("DIGEST_INVALID", str(e)) from e


def written_repository(path: str) -> str | None:
    """The repository a write (PUT, POST, DELETE) to `path` (decoded, after
    `check_path`) may change, or None: a path of no repository's, or no valid name."""
    match = _WRITE.fullmatch(path)
    if match is None:
        return None
    try:
        return check_repository(match.group("name"))
    except InvalidName:
        return None
