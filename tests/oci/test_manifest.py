"""What a manifest references and vouches for, and its type sniffed from its bytes."""

from __future__ import annotations

import json

import pytest

from appliance.oci.digest import Digest
from appliance.oci.manifest import (
    fetchable_blobs,
    platform_manifests,
    references,
    signed_schema1,
    sniff_manifest_type,
    vouched_references,
)
from appliance.oci.mediatypes import DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED, OCI_INDEX, OCI_MANIFEST


def test_manifest_references_and_sniffing() -> None:
    a, b, c = (str(Digest.of(x)) for x in (b"a", b"b", b"c"))
    image = {"schemaVersion": 2, "config": {"digest": a}, "layers": [{"digest": b}, {"digest": b}],
             "subject": {"digest": c}}  # fmt: skip
    body = json.dumps(image).encode()
    assert [str(d) for d in references(body)] == [a, b]  # no repeats; subject is not needed
    assert sniff_manifest_type(body) == OCI_MANIFEST
    schema1 = {"schemaVersion": 1, "fsLayers": [{"blobSum": c}], "signatures": []}
    assert [str(d) for d in references(json.dumps(schema1).encode())] == [c]
    assert sniff_manifest_type(json.dumps({"schemaVersion": 2, "manifests": []}).encode()) == (
        OCI_INDEX
    )
    for other in (b'{"architecture": "amd64"}', b"\x1f\x8b binary", b"[1, 2]", b"{bad json"):
        assert sniff_manifest_type(other) is None and references(other) == []


def test_a_manifest_vouches_only_for_the_fields_its_registry_checks() -> None:
    a, b, c, d, e = (Digest.of(x) for x in (b"a", b"b", b"c", b"d", b"e"))
    foreign = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
    image = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"digest": str(a)},
        "layers": [{"digest": str(b)}, {"digest": str(c), "urls": ["https://example.com/c"]},
                   {"digest": str(d), "mediaType": foreign}],
        "blobs": [{"digest": str(e)}],
    }  # fmt: skip
    body = json.dumps(image).encode()
    assert vouched_references(body, OCI_MANIFEST) == [a, b]  # no urls, no foreign, no blobs
    assert vouched_references(body, OCI_INDEX) == []  # its own mediaType says otherwise
    assert references(body) == [a, b, c, d, e]  # all of them are kept with it, though
    index = json.dumps({"manifests": [{"digest": str(a)}], "layers": [{"digest": str(b)}]})
    assert vouched_references(index.encode(), OCI_INDEX) == [a]
    assert vouched_references(index.encode(), "application/vnd.example+json") == []
    schema1 = json.dumps({"schemaVersion": 1, "fsLayers": [{"blobSum": str(c)}]}).encode()
    assert vouched_references(schema1, DOCKER_SCHEMA1_SIGNED) == [c]


@pytest.mark.parametrize(
    ("media_type", "body", "signed"),
    [
        (DOCKER_SCHEMA1_SIGNED, b"{}", True),  # as labelled
        ("application/json", b'{"schemaVersion": 1, "fsLayers": [], "signatures": []}', True),
        (DOCKER_SCHEMA1, b'{"schemaVersion": 1, "fsLayers": []}', False),
        (OCI_MANIFEST, b'{"schemaVersion": 2, "annotations": {"signatures": "x"}}', False),
        ("application/json", b'"signatures"', False),
    ],
)
def test_signed_schema1_is_told_by_its_type_or_its_body(
    media_type: str, body: bytes, signed: bool
) -> None:
    assert signed_schema1(media_type, body) is signed


def test_an_index_lists_its_manifests_with_their_platform() -> None:
    a, b, c, d = (Digest.of(x) for x in (b"a", b"b", b"c", b"d"))
    index = {
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [
            {"digest": str(a), "platform": {"os": "linux", "architecture": "amd64"}},
            {"digest": str(b), "platform": {"os": "linux", "architecture": "arm64",
                                            "variant": "v8"}},
            {"digest": str(c), "annotations": {"vnd.docker.reference.type": "attestation"}},
            {"digest": str(d), "platform": {"os": "linux"}},  # no architecture: unnamed
            {"digest": "not-a-digest", "platform": {"os": "linux", "architecture": "s390x"}},
            "not a descriptor",
        ],
    }  # fmt: skip
    assert platform_manifests(json.dumps(index).encode()) == [
        (a, "linux/amd64"), (b, "linux/arm64/v8"), (c, None), (d, None),
    ]  # fmt: skip
    for other in (b"{bad json", b"[]", b'{"manifests": "x"}', b'{"layers": []}'):
        assert platform_manifests(other) == []


def test_the_blobs_to_fetch_are_config_and_layers_a_registry_serves() -> None:
    a, b, c, d, e = (Digest.of(x) for x in (b"a", b"b", b"c", b"d", b"e"))
    foreign = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
    image = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {"digest": str(a)},
        "layers": [{"digest": str(b)}, {"digest": str(c), "urls": ["https://example.com/c"]},
                   {"digest": str(d), "mediaType": foreign}, {"digest": str(b)}],
        "blobs": [{"digest": str(e)}],
        "subject": {"digest": str(Digest.of(b"subject"))},
    }  # fmt: skip
    # Foreign and `urls` layers come from elsewhere; a subject is another manifest.
    assert fetchable_blobs(json.dumps(image).encode()) == [a, b, e]
    schema1 = json.dumps({"schemaVersion": 1, "fsLayers": [{"blobSum": str(c)}]}).encode()
    assert fetchable_blobs(schema1) == [c]
    assert fetchable_blobs(b"{bad json") == [] and fetchable_blobs(b"[1]") == []
