"""The distribution API paths regcache serves itself; everything else passes through."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from appliance.oci.digest import Digest, DigestError
from appliance.oci.names import InvalidName, check_repository, parse_reference

_ROUTE = re.compile(r"^/v2/(?P<name>.+)/(?P<kind>manifests|blobs|referrers)/(?P<ref>[^/]+)$")


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


def parse_route(path: str) -> Route | None:
    """The cacheable route of `path`, or None for paths to pass through unchanged."""
    match = _ROUTE.match(path)
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
