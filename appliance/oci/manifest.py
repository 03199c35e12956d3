"""What a manifest references: the digests that must stay while it is kept.

An image manifest references its config and layers (and an artifact's `blobs`); an index
references its child manifests. A referrer's `subject` points the other way (the subject
does not need its referrers), so it is not a reference here. Schema 1 manifests name
layers as `fsLayers[].blobSum`.

What a manifest vouches for is narrower (`vouched_references`): a registry checks, when a
manifest is pushed, that what it references is in the repository, except descriptors
with `urls` (foreign and non-distributable layers, fetched from elsewhere): a manifest
pushed to one's own repository could otherwise name anyone's digest that way.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

from appliance.oci.digest import Digest, DigestError
from appliance.oci.mediatypes import (
    DOCKER_SCHEMA1,
    DOCKER_SCHEMA1_SIGNED,
    MANIFEST_TYPES,
    OCI_INDEX,
    OCI_MANIFEST,
)


def references(body: bytes) -> list[Digest]:
    """Digests `body` references, in order, without repeats; [] if it is not a manifest."""
    return _references(body, vouched_only=False)


def vouched_references(body: bytes) -> list[Digest]:
    """The references a registry made sure are in the manifest's own repository: all but
    descriptors that carry `urls` or a foreign/non-distributable media type."""
    return _references(body, vouched_only=True)


def _references(body: bytes, *, vouched_only: bool) -> list[Digest]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return []
    if not isinstance(doc, dict):
        return []
    found: dict[Digest, None] = {}
    descriptors: list[Any] = [doc.get("config")]
    for key in ("manifests", "layers", "blobs"):
        value = doc.get(key)
        if isinstance(value, list):
            descriptors.extend(value)
    for descriptor in descriptors:
        if isinstance(descriptor, dict) and not (vouched_only and _external(descriptor)):
            _add(found, descriptor.get("digest"))
    fs_layers = doc.get("fsLayers")
    if isinstance(fs_layers, list):
        for layer in fs_layers:
            if isinstance(layer, dict):
                _add(found, layer.get("blobSum"))
    return list(found)


def sniff_manifest_type(body: bytes) -> str | None:
    """The media type of `body` if it reads as a manifest, else None (used to re-index a
    store from its files, where the type upstream sent is not recorded)."""
    if not body.lstrip().startswith(b"{"):
        return None
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict) or doc.get("schemaVersion") not in (1, 2):
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


def _external(descriptor: dict[str, Any]) -> bool:
    media_type = str(descriptor.get("mediaType", ""))
    external_type = "foreign" in media_type or "nondistributable" in media_type
    return bool(descriptor.get("urls")) or external_type


def _add(found: dict[Digest, None], value: object) -> None:
    if isinstance(value, str):
        with contextlib.suppress(DigestError):
            found[Digest.parse(value)] = None
