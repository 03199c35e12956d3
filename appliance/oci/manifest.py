"""What a manifest references: the digests that must stay while it is kept.

An image manifest references its config and layers (and an artifact's `blobs`); an index
references its child manifests. A referrer's `subject` points the other way (the subject
does not need its referrers), so it is not a reference here. Schema 1 manifests name
layers as `fsLayers[].blobSum`.

What a manifest vouches for is narrower (`vouched_references`): only the fields a
registry checks, when a manifest of that type is pushed, to name content already in the
repository — `config` and `layers` of an image manifest, `manifests` of an index,
`fsLayers` of schema 1 — and never a descriptor with `urls` (foreign and
non-distributable layers, fetched from elsewhere, which registries do not check).
Anything else a manifest pushed to one's own repository carries (`blobs`, a field of
another type) could name anyone's digest (issue #13).
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from appliance.oci.digest import Digest, DigestError
from appliance.oci.mediatypes import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_SCHEMA1,
    DOCKER_SCHEMA1_SIGNED,
    MANIFEST_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
)

# What a registry checks at push, by the manifest's media type.
_CHECKED_FIELDS = {
    OCI_MANIFEST: ("config", "layers"),
    DOCKER_MANIFEST: ("config", "layers"),
    OCI_INDEX: ("manifests",),
    DOCKER_MANIFEST_LIST: ("manifests",),
}


def references(body: bytes) -> list[Digest]:
    """Digests `body` references, in order, without repeats; [] if it is not a manifest."""
    doc = _document(body)
    if doc is None:
        return []
    found: dict[Digest, None] = {}
    descriptors: list[Any] = [doc.get("config")]
    for key in ("manifests", "layers", "blobs"):
        value = doc.get(key)
        if isinstance(value, list):
            descriptors.extend(value)
    for descriptor in descriptors:
        if isinstance(descriptor, dict):
            _add(found, descriptor.get("digest"))
    _add_fs_layers(found, doc)
    return list(found)


def vouched_references(body: bytes, media_type: str) -> list[Digest]:
    """The references a registry made sure are in the manifest's own repository, for a
    manifest of `media_type` (the body's own `mediaType`, if it has one, must agree)."""
    doc = _document(body)
    if doc is None:
        return []
    declared = doc.get("mediaType")
    if declared is not None and declared != media_type:
        return []
    found: dict[Digest, None] = {}
    if media_type in (DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED):
        _add_fs_layers(found, doc)
        return list(found)
    for key in _CHECKED_FIELDS.get(media_type, ()):
        value = doc.get(key)
        for descriptor in value if isinstance(value, list) else [value]:
            if isinstance(descriptor, dict) and not _external(descriptor):
                _add(found, descriptor.get("digest"))
    return list(found)


def _document(body: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def _add_fs_layers(found: dict[Digest, None], doc: dict[str, Any]) -> None:
    fs_layers = doc.get("fsLayers")
    if isinstance(fs_layers, list):
        for layer in fs_layers:
            if isinstance(layer, dict):
                _add(found, layer.get("blobSum"))


def sniff_manifest_type(body: bytes) -> str | None:
    """The media type of `body` if it reads as a manifest, else None (used to re-index a
    store from its files, where the type upstream sent is not recorded)."""
    if not body.lstrip().startswith(b"{"):
        return None
    doc = _document(body)
    if doc is None or doc.get("schemaVersion") not in (1, 2):
        return None
    declared = doc.get("mediaType")
    if isinstance(declared, str) and declared in MANIFEST_TYPES:
        return declared
    if doc.get("schemaVersion") == 1 and "fsLayers" in doc:
        return DOCKER_SCHEMA1_SIGNED if "signatures" in doc else DOCKER_SCHEMA1
    if isinstance(doc.get("manifests"), list):
        return OCI_INDEX  # mediaType is optional in an OCI index
    if isinstance(doc.get("layers"), list) and isinstance(doc.get("config"), dict):
        return OCI_MANIFEST
    return None


def signed_schema1(media_type: str, body: bytes) -> bool:
    """Whether `body` is a signed schema 1 manifest (a JWS, `…v1+prettyjws`, whatever
    Content-Type it came with). Its digest covers the payload without the signatures
    (the protected header's `formatLength` bytes, then its `formatTail`), so its bytes
    never hash to the digest a registry names them by."""
    if media_type == DOCKER_SCHEMA1_SIGNED:
        return True
    if b'"signatures"' not in body:
        return False
    doc = _document(body)
    return doc is not None and doc.get("schemaVersion") == 1 and "signatures" in doc


def _external(descriptor: dict[str, Any]) -> bool:
    media_type = str(descriptor.get("mediaType", ""))
    external_type = "foreign" in media_type or "nondistributable" in media_type
    return bool(descriptor.get("urls")) or external_type


def _add(found: dict[Digest, None], value: object) -> None:
    if isinstance(value, str):
        with contextlib.suppress(DigestError):
            found[Digest.parse(value)] = None


def platform_manifests(body: bytes) -> list[tuple[Digest, str | None]]:
    """An index's manifests with their platform as `os/arch[/variant]` (None when the
    descriptor names none: an attestation, or an index in an index)."""
    doc = _document(body)
    out: list[tuple[Digest, str | None]] = []
    manifests = doc.get("manifests") if doc else None
    for descriptor in manifests if isinstance(manifests, list) else ():
        if not isinstance(descriptor, dict):
            continue
        found: dict[Digest, None] = {}
        _add(found, descriptor.get("digest"))
        platform = descriptor.get("platform")
        name = None
        if isinstance(platform, dict) and platform.get("os") and platform.get("architecture"):
            parts = [platform["os"], platform["architecture"], platform.get("variant")]
            name = "/".join(str(p) for p in parts if p)
        out.extend((digest, name) for digest in found)
    return out


def fetchable_blobs(body: bytes) -> list[Digest]:
    """An image manifest's config, layers and blobs a registry serves (not those with
    `urls`: foreign layers come from elsewhere), in order, without repeats."""
    doc = _document(body)
    if doc is None:
        return []
    found: dict[Digest, None] = {}
    descriptors: list[Any] = [doc.get("config")]
    for key in ("layers", "blobs"):
        value = doc.get(key)
        if isinstance(value, list):
            descriptors.extend(value)
    for descriptor in descriptors:
        if isinstance(descriptor, dict) and not _external(descriptor):
            _add(found, descriptor.get("digest"))
    _add_fs_layers(found, doc)
    return list(found)
