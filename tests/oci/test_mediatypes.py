"""Accept headers and which manifest types a client takes."""

from __future__ import annotations

from appliance.oci.mediatypes import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    DOCKER_SCHEMA1_SIGNED,
    OCI_INDEX,
    OCI_MANIFEST,
    accept_key,
    accepts,
    parse_accept,
)


def test_accept_negotiation() -> None:
    accepted = parse_accept([f"{OCI_INDEX}, application/json;q=0.5", "text/plain"])
    assert accepted == {OCI_INDEX, "application/json", "text/plain"}
    assert accepts(accepted, OCI_INDEX)
    assert not accepts(frozenset(), OCI_INDEX)  # registries never send an index unasked


def test_clients_without_a_manifest_accept_get_what_registries_send_by_default() -> None:
    for anything in (frozenset(), frozenset({"*/*"})):
        assert accepts(anything, DOCKER_MANIFEST) and accepts(anything, DOCKER_SCHEMA1_SIGNED)
        assert not accepts(anything, OCI_MANIFEST) and not accepts(anything, DOCKER_MANIFEST_LIST)
    assert not accepts(frozenset({DOCKER_MANIFEST}), OCI_MANIFEST)


def test_the_tag_cache_key_names_only_manifest_types_in_a_stable_order() -> None:
    one = accept_key(frozenset({OCI_MANIFEST, "text/html", OCI_INDEX}))
    assert one == accept_key(frozenset({OCI_INDEX, OCI_MANIFEST})) == f"{OCI_INDEX},{OCI_MANIFEST}"
    assert accept_key(frozenset({"*/*", "application/json"})) == "*/*"
    assert accept_key(frozenset()) == ""
