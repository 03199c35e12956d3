"""What a manifest references: the digests that must stay while it is kept.

An image manifest references its config and layers (and an artifact's `blobs`); an index
references its child manifests. A referrer's `subject` points the other way (the subject
does not need its referrers), so it is not a reference here. Schema 1 manifests name
layers as `fsLayers[].blobSum`.
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
        if isinstance(descriptor, dict):
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


def _add(found: dict[Digest, None], value: object) -> None:
    if isinstance(value, str):
        with contextlib.suppress(DigestError):
            found[Digest.parse(value)] = None
