"""A blob the cache sends to the shared bucket (`store.s3.redirect`): a 307 to the
presigned URL with the digest, counted and audited as `redirected`, no body."""

from __future__ import annotations

from appliance.cache.answers import Redirected
from appliance.oci.digest import Digest
from tests.proxy.conftest import REGISTRY, Proxy

DIGEST = Digest.of(b"layer")
URL = f"https://s3.example/bucket/blobs/sha256/{DIGEST.hex}?X-Amz-Signature=abc"


async def test_a_redirected_blob_is_a_307_to_the_bucket(proxy: Proxy) -> None:
    proxy.cache.answers(Redirected(DIGEST, 5, URL))
    response = await proxy.client.get(f"/v2/lib/app/blobs/{DIGEST}", headers={"Host": REGISTRY},
                                      allow_redirects=False)  # fmt: skip
    assert response.status == 307 and await response.read() == b""
    assert response.headers["Location"] == URL
    assert response.headers["Docker-Content-Digest"] == str(DIGEST)
    assert proxy.audit[-1]["outcome"] == "redirected" and proxy.audit[-1]["bytes"] == 0
    labels = {"registry": REGISTRY, "kind": "blob", "outcome": "redirected"}
    assert proxy.metrics.registry.get_sample_value("regcache_cache_answers_total", labels) == 1
