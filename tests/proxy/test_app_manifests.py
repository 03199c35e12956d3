"""Manifest answers over the whole path (real proxy, cache, store, index and upstream
client against a loopback registry): a HEAD always says the manifest's real length, and
signed schema 1 manifests pass through uncached (issue #15, defect 8)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from appliance.oci.digest import Digest
from appliance.oci.mediatypes import DOCKER_SCHEMA1, DOCKER_SCHEMA1_SIGNED
from tests.proxy.registry import Manifest, manifest, stack

IMAGE = manifest("image")


def assert_describes(response: Any, m: Manifest) -> None:
    assert response.status == 200
    assert response.headers["Content-Length"] == str(len(m.body))
    assert response.headers["Docker-Content-Digest"] == str(m.digest)
    assert response.headers["Content-Type"] == m.media_type


async def test_a_tag_head_says_the_real_length_when_upstreams_head_says_none(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    """containerd takes a HEAD's Content-Length as the manifest's size: never 0."""
    async with stack(tmp_path, aiohttp_client) as s:
        s.registry.put("team/app", "v1", IMAGE)
        s.registry.head_length = False
        assert_describes(await s.ask("/v2/team/app/manifests/v1", "HEAD"), IMAGE)
        assert s.registry.asked("GET", f"/v2/team/app/manifests/{IMAGE.digest}") == 1
        # Fetched to learn its length, it is stored: revalidated, a HEAD is answered
        # from the store, and so is the GET that follows.
        assert_describes(await s.ask("/v2/team/app/manifests/v1", "HEAD"), IMAGE)
        response = await s.ask("/v2/team/app/manifests/v1")
        assert_describes(response, IMAGE)
        assert await response.read() == IMAGE.body
        assert sum(1 for method, _, _ in s.registry.seen if method == "GET") == 1


async def test_a_tag_head_says_the_real_length_and_digest_when_upstream_names_no_digest(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    async with stack(tmp_path, aiohttp_client) as s:
        s.registry.put("team/app", "v1", IMAGE)
        s.registry.head_digest = False
        assert_describes(await s.ask("/v2/team/app/manifests/v1", "HEAD"), IMAGE)


async def test_a_head_by_digest_says_the_real_length_when_upstreams_head_says_none(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    async with stack(tmp_path, aiohttp_client) as s:
        s.registry.put("team/app", "v1", IMAGE)
        s.registry.head_length = False
        assert_describes(await s.ask(f"/v2/team/app/manifests/{IMAGE.digest}", "HEAD"), IMAGE)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def signed_schema1() -> Manifest:
    """A schema 1 manifest signed as libtrust does (docker's `PrettySignature`): the
    payload's bytes up to its closing brace, the `signatures` array, then the payload's
    tail; the protected header records that cut (`formatLength`, `formatTail`)."""
    layer = str(Digest.of(b"layer"))
    payload = json.dumps({
        "schemaVersion": 1, "name": "team/old", "tag": "v1", "architecture": "amd64",
        "fsLayers": [{"blobSum": layer}],
        "history": [{"v1Compatibility": json.dumps({"id": "a" * 64})}],
    }, indent=3).encode()  # fmt: skip
    cut = payload.rstrip().rfind(b"}")
    cut = len(payload[:cut].rstrip())  # formatLength: up to the last value's end
    protected = _b64(json.dumps({
        "formatLength": cut, "formatTail": _b64(payload[cut:]), "time": "2016-01-01T00:00:00Z",
    }).encode())  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    signing_input = f"{protected}.{_b64(payload)}".encode()
    r, s = decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
    numbers = key.public_key().public_numbers()
    jwk = {"crv": "P-256", "kty": "EC", "x": _b64(numbers.x.to_bytes(32, "big")),
           "y": _b64(numbers.y.to_bytes(32, "big"))}  # fmt: skip
    signatures = [{
        "header": {"jwk": jwk, "alg": "ES256"},
        "signature": _b64(r.to_bytes(32, "big") + s.to_bytes(32, "big")),
        "protected": protected,
    }]  # fmt: skip
    listed = json.dumps(signatures, indent=3).replace("\n", "\n   ").encode()
    body = payload[:cut] + b',\n   "signatures": ' + listed + payload[cut:]
    # The digest as docker computes it: the payload cut back out of the signed body.
    header = json.loads(_unb64(json.loads(body)["signatures"][0]["protected"]))
    digest = Digest.of(body[: header["formatLength"]] + _unb64(header["formatTail"]))
    assert digest == Digest.of(payload) != Digest.of(body)
    return Manifest(body, DOCKER_SCHEMA1_SIGNED, digest)


async def test_a_signed_schema1_manifest_passes_through_uncached(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    signed = signed_schema1()
    async with stack(tmp_path, aiohttp_client) as s:
        s.registry.put("team/old", "v1", signed)
        # As an older registry may label it: the body says what it is.
        labelled = Manifest(signed.body, "application/json", signed.digest)
        s.registry.put("team/older", "v1", labelled)
        accept = f"{DOCKER_SCHEMA1_SIGNED}, {DOCKER_SCHEMA1}"
        for repository, reference, m in [
            ("team/old", "v1", signed), ("team/older", "v1", labelled),
            ("team/old", str(signed.digest), signed), ("team/old", "v1", signed),
        ]:  # fmt: skip
            response = await s.ask(f"/v2/{repository}/manifests/{reference}", Accept=accept)
            assert response.status == 200, await response.text()
            assert await response.read() == signed.body  # upstream's bytes and headers
            assert_describes(response, m)
        head = await s.ask("/v2/team/old/manifests/v1", "HEAD", Accept=accept)
        assert head.status == 200 and head.headers["Content-Length"] == str(len(signed.body))
        assert await s.index.manifest_type(signed.digest) is None
        assert await s.index.blob(signed.digest) is None
        assert not s.files.path_for(signed.digest).exists()
        assert s.registry.asked("GET", f"/v2/team/old/manifests/{signed.digest}") == 3


async def test_an_unsigned_schema1_manifest_is_stored_as_before(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    body = json.dumps({"schemaVersion": 1, "name": "team/old", "tag": "v1",
                       "fsLayers": [], "history": []}).encode()  # fmt: skip
    unsigned = Manifest(body, DOCKER_SCHEMA1, Digest.of(body))
    async with stack(tmp_path, aiohttp_client) as s:
        s.registry.put("team/old", "v1", unsigned)
        for _ in range(2):
            response = await s.ask("/v2/team/old/manifests/v1", Accept=DOCKER_SCHEMA1)
            assert response.status == 200 and await response.read() == body
        assert await s.index.manifest_type(unsigned.digest) == DOCKER_SCHEMA1
        assert s.registry.asked("GET", f"/v2/team/old/manifests/{unsigned.digest}") == 1
