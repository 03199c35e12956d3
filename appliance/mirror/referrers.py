"""Where a digest's signatures and attestations are found: the OCI referrers API
(distribution-spec 1.1, `GET /v2/<name>/referrers/<digest>`), or on registries without
it the tags cosign's tag schema names (`sha256-<hex>`, and `.sig`, `.att`, `.sbom`)."""

from __future__ import annotations

import json

from appliance.cache.ports import Upstream, UpstreamUnavailable
from appliance.oci.digest import Digest, DigestError
from appliance.oci.mediatypes import OCI_INDEX

_MAX_LIST_BYTES = 4 << 20
_COSIGN_SUFFIXES = ("", ".sig", ".att", ".sbom")


async def referrers_listed(
    upstream: Upstream, repository_url: str, digest: Digest
) -> list[Digest] | None:
    """The referrers the API lists for `digest`; None when upstream has no referrers API
    (404, or an answer that is not an index) or could not be asked."""
    try:
        reply = await upstream.fetch(
            "GET", f"{repository_url}/referrers/{digest}", {"Accept": OCI_INDEX}
        )
    except UpstreamUnavailable:
        return None
    try:
        if reply.status != 200:
            return None
        body = await reply.read(_MAX_LIST_BYTES)
    finally:
        reply.close()
    try:
        manifests = json.loads(body).get("manifests")
    except (ValueError, AttributeError):
        return None
    if not isinstance(manifests, list):
        return None
    found: list[Digest] = []
    for descriptor in manifests:
        try:
            found.append(Digest.parse(descriptor["digest"]))
        except (DigestError, KeyError, TypeError):
            continue
    return found


def referrer_tags(digest: Digest) -> list[str]:
    """cosign's tag-schema names for what refers to `digest`."""
    base = f"{digest.algorithm}-{digest.hex}"
    return [base + suffix for suffix in _COSIGN_SUFFIXES]
