"""Manifest media types and Accept negotiation (manifests are served byte-exact)."""

from __future__ import annotations

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_SCHEMA1 = "application/vnd.docker.distribution.manifest.v1+json"
DOCKER_SCHEMA1_SIGNED = "application/vnd.docker.distribution.manifest.v1+prettyjws"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"

MANIFEST_TYPES = (
    OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST,
    DOCKER_SCHEMA1_SIGNED, DOCKER_SCHEMA1,
)  # fmt: skip
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
OCTET_STREAM = "application/octet-stream"


def parse_accept(values: list[str]) -> frozenset[str]:
    """Media types named in Accept header values (parameters and q-values dropped)."""
    types: set[str] = set()
    for value in values:
        for item in value.split(","):
            media_type = item.split(";", 1)[0].strip().lower()
            if media_type:
                types.add(media_type)
    return frozenset(types)


def accepts(accepted: frozenset[str], media_type: str) -> bool:
    """Whether a client with this Accept set takes `media_type`.

    No Accept (or `*/*`) takes what a registry sends by default; registries answer such
    clients with schema 2 or schema 1, never an index, so that is what we allow.
    """
    if media_type in accepted:
        return True
    if not accepted or "*/*" in accepted:
        return media_type not in INDEX_TYPES and media_type != OCI_MANIFEST
    return False


def accept_key(accepted: frozenset[str]) -> str:
    """A stable key for the set of manifest types a client accepts (tag cache key)."""
    return ",".join(sorted(t for t in accepted if t in MANIFEST_TYPES or t == "*/*"))
