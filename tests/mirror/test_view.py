"""The mirror's mappings as the cache asks about them: a mirrored tag by every name its
registry and repository go by, wildcard hosts as registries of their own, and what a
network-access entry opens to anyone (what its manifests vouch for), only through its
own repository."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from appliance.cache.ports import MirrorAnswer
from appliance.config.model import parse_config
from appliance.config.registries import Registries
from appliance.mirror.records import MirroredTag, Place
from appliance.mirror.view import MirrorTags, network_content
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import OCI_INDEX, OCI_MANIFEST

A, B, C, L = (Digest.of(x) for x in (b"a", b"b", b"c", b"layer"))
CONFIG = """\
appliance: {ipv4: 192.0.2.10}
registries:
  - name: docker.io
    hosts: [registry-1.docker.io, index.docker.io]
    auth_hosts: [auth.docker.io]
  - name: ghcr.io
    hosts: [ghcr.io]
  - name: gcr.io
    hosts: [gcr.io, "*.gcr.io"]
"""
ALPINE = Place("docker.io", "library/alpine", "3.20")


@pytest.fixture
def view(tmp_path: Path) -> MirrorTags:
    return MirrorTags(Registries.of(parse_config(CONFIG, tmp_path / "config.yaml")).place)


def mirrored(place: Place, digest: Digest, access: str = "network") -> MirroredTag:
    return MirroredTag(place, str(place), digest, OCI_MANIFEST, 10, 1.0, access)


def test_a_docker_hub_tag_is_found_by_every_name_of_its_host_and_repository(
    view: MirrorTags,
) -> None:
    view.load([mirrored(ALPINE, A)], {})
    for host in ("registry-1.docker.io", "index.docker.io"):
        for repository in ("library/alpine", "alpine"):
            assert view.tag(host, repository, "3.20") == MirrorAnswer(A, True), (host, repository)
    assert view.tag("registry-1.docker.io", "alpine", "3.19") is None
    assert view.tag("registry-1.docker.io", "someone/alpine", "3.20") is None
    assert view.tag("ghcr.io", "library/alpine", "3.20") is None  # another registry
    assert view.tag("auth.docker.io", "library/alpine", "3.20") is None  # no API host
    assert view.tag("example.com", "library/alpine", "3.20") is None  # not configured


def test_only_docker_hub_has_a_library_alias(view: MirrorTags) -> None:
    view.load([mirrored(Place("ghcr.io", "library/tool", "1"), A),
               mirrored(Place("ghcr.io", "app", "1"), B)], {})  # fmt: skip
    assert view.tag("ghcr.io", "library/tool", "1") == MirrorAnswer(A, True)
    assert view.tag("ghcr.io", "tool", "1") is None
    assert view.tag("ghcr.io", "library/app", "1") is None


def test_an_upstream_access_tag_is_answered_as_not_network(view: MirrorTags) -> None:
    view.load([mirrored(ALPINE, A, access="upstream")], {})
    assert view.tag("registry-1.docker.io", "alpine", "3.20") == MirrorAnswer(A, False)


def test_each_name_under_a_wildcard_is_a_registry_of_its_own(view: MirrorTags) -> None:
    view.load([
        mirrored(Place("eu.gcr.io", "proj/tool", "1"), A),
        mirrored(Place("gcr.io", "proj/tool", "1"), B),
    ], {("eu.gcr.io", "proj/tool"): frozenset({A})})  # fmt: skip
    assert view.tag("eu.gcr.io", "proj/tool", "1") == MirrorAnswer(A, True)
    assert view.tag("gcr.io", "proj/tool", "1") == MirrorAnswer(B, True)
    assert view.tag("us.gcr.io", "proj/tool", "1") is None
    assert view.opens("eu.gcr.io", "proj/tool", A)
    assert not view.opens("us.gcr.io", "proj/tool", A)
    assert not view.opens("gcr.io", "proj/tool", A)


def test_a_network_entry_opens_its_digests_only_through_its_own_repository(
    view: MirrorTags,
) -> None:
    view.load([mirrored(ALPINE, A)], {("docker.io", "library/alpine"): frozenset({A, L})})
    for host in ("registry-1.docker.io", "index.docker.io"):
        for repository in ("library/alpine", "alpine"):
            assert view.opens(host, repository, L) and view.opens(host, repository, A)
    assert not view.opens("registry-1.docker.io", "library/alpine", B)  # not its content
    assert not view.opens("registry-1.docker.io", "library/busybox", L)  # another repository
    assert not view.opens("registry-1.docker.io", "mallory/alpine", L)
    assert not view.opens("ghcr.io", "library/alpine", L)  # another registry


def test_load_replaces_the_mappings_whole(view: MirrorTags) -> None:
    other = Place("ghcr.io", "org/app", "v1")
    view.load([mirrored(ALPINE, A), mirrored(other, B)],
              {("docker.io", "library/alpine"): frozenset({A})})  # fmt: skip
    assert view.count == 2
    view.load([mirrored(other, C)], {})
    assert view.count == 1
    assert view.tag("registry-1.docker.io", "library/alpine", "3.20") is None
    assert not view.opens("registry-1.docker.io", "library/alpine", A)
    assert view.tag("ghcr.io", "org/app", "v1") == MirrorAnswer(C, True)
    view.load([], {})
    assert view.count == 0 and view.tag("ghcr.io", "org/app", "v1") is None


async def test_a_network_tag_opens_its_manifests_and_what_they_vouch_for_only() -> None:
    """What `Mirror.reload` loads: through an index into its manifests, and from an image
    manifest its config and layers; never what a registry does not check at push."""
    config, layer, foreign, extra, private = (Digest.of(x) for x in (b"c", b"l", b"f", b"x", b"p"))
    image = _doc(OCI_MANIFEST, config={"digest": str(config)}, layers=[
        {"digest": str(layer)}, {"digest": str(foreign), "urls": ["https://example.com/f"]}],
        blobs=[{"digest": str(extra)}])  # fmt: skip
    missing = Digest.of(b"a platform not copied")
    index = _doc(OCI_INDEX, manifests=[{"digest": str(Digest.of(image))},
                                       {"digest": str(missing)}])  # fmt: skip
    bodies = {Digest.of(image): (image, OCI_MANIFEST), Digest.of(index): (index, OCI_INDEX),
              Digest.of(b"private"): (_doc(OCI_MANIFEST, layers=[{"digest": str(private)}]),
                                      OCI_MANIFEST)}  # fmt: skip
    asked: list[Digest] = []

    async def body_of(digest: Digest) -> tuple[bytes, str] | None:
        asked.append(digest)
        return bodies.get(digest)

    app = Place("ghcr.io", "org/app", "v1")
    tags = [mirrored(ALPINE, Digest.of(index)),
            mirrored(dataclasses.replace(ALPINE, tag="3.20-old"), Digest.of(image)),
            mirrored(app, Digest.of(b"private"), access="upstream")]  # fmt: skip
    opened = await network_content(tags, body_of)
    assert opened == {("docker.io", "library/alpine"): frozenset(
        {Digest.of(index), Digest.of(image), missing, config, layer})}  # fmt: skip
    assert sorted(asked) == sorted({Digest.of(index), Digest.of(image), missing})  # once each


async def test_a_manifest_of_another_type_than_its_body_says_vouches_for_nothing() -> None:
    layer = Digest.of(b"l")
    body = _doc(OCI_MANIFEST, layers=[{"digest": str(layer)}])

    async def body_of(digest: Digest) -> tuple[bytes, str] | None:
        return (body, OCI_INDEX) if digest == Digest.of(body) else None

    opened = await network_content([mirrored(ALPINE, Digest.of(body))], body_of)
    assert opened == {("docker.io", "library/alpine"): frozenset({Digest.of(body)})}


def _doc(media_type: str, **fields: object) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": media_type, **fields}).encode()
