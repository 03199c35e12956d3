"""What upstream said yes to: bounded grants, what a granted manifest vouches for, and
what counts as an answer about a digest."""

from __future__ import annotations

from appliance.cache.answers import MemoryReply
from appliance.cache.verdicts import Children, Grants, Refs, shows, unknown_children, vouched
from appliance.oci.digest import Digest

A, B, C, D = (Digest.of(x) for x in (b"a", b"b", b"c", b"d"))


def test_a_key_keeps_its_newest_grants_and_a_snapshot_never_changes() -> None:
    grants = Grants(max_keys=2, max_per_key=2)
    grants.put("k", A, 1.0)
    before = grants.get("k")
    grants.put("k", B, 2.0)
    grants.put("k", C, 3.0)
    assert dict(before) == {A: 1.0}
    assert dict(grants.get("k")) == {B: 2.0, C: 3.0}  # A, the oldest, went
    grants.put("k", B, 4.0)  # granted again: the newest now
    grants.put("k", D, 5.0)
    assert dict(grants.get("k")) == {B: 4.0, D: 5.0}
    grants.put("x", A, 6.0)
    grants.put("y", A, 7.0)
    assert dict(grants.get("k")) == {}  # two keys at most: the oldest went


def test_a_granted_manifest_vouches_two_levels_deep_and_no_further() -> None:
    index, image, layer, deeper, stranger = (Digest.of(x) for x in (b"i", b"m", b"l", b"x", b"s"))
    children = Children(16)
    children.put(index, Refs(frozenset({image}), manifests=True))
    children.put(image, Refs(frozenset({layer}), manifests=False))
    children.put(layer, Refs(frozenset({deeper}), manifests=False))
    granted = {index: 100.0}
    assert vouched(granted, index, children, since=50.0)
    assert vouched(granted, image, children, 50.0) and vouched(granted, layer, children, 50.0)
    assert not vouched(granted, deeper, children, 50.0)
    assert not vouched(granted, stranger, children, 50.0)
    assert not vouched(granted, layer, children, since=150.0)  # granted too long ago
    assert not vouched({image: 100.0}, deeper, children, 50.0)  # an image's refs are blobs


def test_what_vouched_could_not_look_into_is_named() -> None:
    index, image, layer, old = (Digest.of(x) for x in (b"i", b"m", b"l", b"o"))
    children = Children(16)
    children.put(index, Refs(frozenset({image}), manifests=True))
    granted = {index: 100.0, layer: 100.0, old: 1.0}
    assert unknown_children(granted, children, since=50.0) == [image, layer]


def test_an_answer_shows_a_digest_only_with_evidence_and_no_contradiction() -> None:
    def reply(**headers: str) -> MemoryReply:
        return MemoryReply(200, {k.replace("_", "-"): v for k, v in headers.items()}, b"")

    assert shows(reply(Docker_Content_Digest=str(A)), A, None)
    assert not shows(reply(Docker_Content_Digest=str(B)), A, None)
    assert shows(reply(Content_Length="10"), A, 10)  # a CDN sends no digest
    assert not shows(reply(Content_Length="11"), A, 10)
    assert not shows(reply(Content_Length="10"), A, None)  # size unknown: no evidence
    assert not shows(reply(), A, 10)
    assert not shows(reply(Docker_Content_Digest=str(A), Content_Length="9"), A, 10)
