"""Which requests the cache answers: the typed manifest and blob routes of a request path,
and the bounded route label metrics use."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from appliance.oci.digest import Digest
from appliance.oci.routes import Kind, RouteError, parse_route


@dataclass(frozen=True, slots=True)
class ManifestRoute:
    repository: str
    reference: str | Digest
    """A tag or a digest."""
    kind: ClassVar[Literal["manifest"]] = "manifest"


@dataclass(frozen=True, slots=True)
class BlobRoute:
    repository: str
    reference: Digest
    kind: ClassVar[Literal["blob"]] = "blob"


@dataclass(frozen=True, slots=True)
class ReferrersRoute:
    repository: str
    reference: Digest
    """The subject."""
    query: str = ""
    """The query as sent (`artifactType=…`, a page's `n` and `last`)."""
    kind: ClassVar[Literal["referrers"]] = "referrers"


CacheRoute = ManifestRoute | BlobRoute | ReferrersRoute


def cache_route(path: str, query: str = "") -> CacheRoute | None:
    """The route of `path` (decoded, after `check_path`) the cache answers, or None for
    paths to pass through unchanged; `query` (as sent) goes with a referrers request.
    RouteError for a bad name or reference."""
    route = parse_route(path)
    if route is None:
        return None
    match route.kind:
        case Kind.MANIFEST:
            return ManifestRoute(route.repository, route.reference)
        case Kind.BLOB if isinstance(route.reference, Digest):
            return BlobRoute(route.repository, route.reference)
        case Kind.REFERRERS if isinstance(route.reference, Digest):
            return ReferrersRoute(route.repository, route.reference, query)
    # parse_route gives blobs a digest; should that change, the path is refused as such.
    raise RouteError("DIGEST_INVALID", f"invalid digest {str(route.reference)[:120]!r}")


def route_label(path: str) -> str:
    """The metrics label of a request path: one of a few kinds, never the path."""
    if path in ("/v2/", "/v2"):
        return "ping"
    try:
        route = parse_route(path)
    except RouteError:
        return "other"
    return "other" if route is None else route.kind.name.lower()
