"""The repository the cache tests pull: `library/alpine` on Docker Hub's origin, a tag
`3` naming an OCI manifest, a blob, and the `Target` of a client with a token."""

from __future__ import annotations

import hashlib

from appliance.cache.answers import Target
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import OCI_INDEX, OCI_MANIFEST
from tests.cache.fakes import FakeUpstream

ORIGIN = "https://registry-1.docker.io"
MANIFEST = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}'
M_DIGEST = "sha256:" + hashlib.sha256(MANIFEST).hexdigest()
BLOB = bytes(range(256)) * 4096
B_DIGEST = Digest.of(BLOB)


def target(accept: frozenset[str] = frozenset({OCI_MANIFEST, OCI_INDEX})) -> Target:
    return Target(ORIGIN, "library/alpine", {"Authorization": "Bearer t"}, accept)


def tag_routes(upstream: FakeUpstream) -> None:
    url = f"{ORIGIN}/v2/library/alpine/manifests"
    upstream.add("HEAD", f"{url}/3", 200, Docker_Content_Digest=M_DIGEST,
                 Content_Type=OCI_MANIFEST, Content_Length=str(len(MANIFEST)))  # fmt: skip
    upstream.add("GET", f"{url}/{M_DIGEST}", 200, MANIFEST, Docker_Content_Digest=M_DIGEST,
                 Content_Type=OCI_MANIFEST)  # fmt: skip
