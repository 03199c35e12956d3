"""Where a digest's signatures and attestations are found: the referrers API's list,
None when a registry has no such API (then cosign's tag schema names them)."""

from __future__ import annotations

import json

from appliance.mirror.referrers import referrer_tags, referrers_listed
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import OCI_INDEX, OCI_MANIFEST
from tests.cache.fakes import FakeUpstream

BASE = "https://ghcr.io/v2/org/app"
SUBJECT = Digest.of(b"the image")
SIG, ATT = Digest.of(b"a signature"), Digest.of(b"an attestation")
URL = f"{BASE}/referrers/{SUBJECT}"


def listing(*descriptors: object) -> bytes:
    return json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                       "manifests": list(descriptors)}).encode()  # fmt: skip


async def test_the_api_lists_each_referrer_and_skips_what_is_no_descriptor() -> None:
    upstream = FakeUpstream()
    upstream.add("GET", URL, 200, listing(
        {"mediaType": OCI_MANIFEST, "digest": str(SIG), "artifactType": "sig"},
        {"mediaType": OCI_MANIFEST, "digest": "md5:nope"},
        {"mediaType": OCI_MANIFEST},
        "junk",
        {"mediaType": OCI_MANIFEST, "digest": str(ATT)},
    ), Content_Type=OCI_INDEX)  # fmt: skip
    assert await referrers_listed(upstream, BASE, SUBJECT) == [SIG, ATT]
    assert upstream.calls == [("GET", URL, {"Accept": OCI_INDEX})]


async def test_an_empty_list_says_the_api_is_there_and_nothing_refers() -> None:
    upstream = FakeUpstream()
    upstream.add("GET", URL, 200, listing())
    assert await referrers_listed(upstream, BASE, SUBJECT) == []


async def test_no_api_is_none() -> None:
    answers = [(404, b""), (200, b"<html>"), (200, b"[1]"), (200, b'{"manifests": "x"}'),
               (500, listing()), (200, b"{bad")]  # fmt: skip
    for status, body in answers:
        upstream = FakeUpstream()
        upstream.add("GET", URL, status, body)
        assert await referrers_listed(upstream, BASE, SUBJECT) is None, (status, body)
    down = FakeUpstream(unreachable={"ghcr.io"})
    assert await referrers_listed(down, BASE, SUBJECT) is None


def test_cosigns_tag_schema_names_the_signature_attestation_and_sbom() -> None:
    base = f"sha256-{SUBJECT.hex}"
    assert referrer_tags(SUBJECT) == [base, base + ".sig", base + ".att", base + ".sbom"]
