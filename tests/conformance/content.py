"""What the conformance tests push and check: random blobs, OCI manifests and indexes as exact
bytes, the push steps every test's setup shares, and the spec's error-body rules."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

import pytest
from yarl import URL

from tests.conformance.client import Endpoint, Registry, Reply

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCTETS = {"Content-Type": "application/octet-stream"}
# The types a client names in Accept: distribution answers an OCI manifest only to a
# client that accepts it (content negotiation, spec "Pulling manifests").
ACCEPT = {"Accept": f"{MANIFEST}, {INDEX}"}
# spec "Error Codes": `code` MUST be one of these.
SPEC_CODES = frozenset({
    "BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID",
    "MANIFEST_BLOB_UNKNOWN", "MANIFEST_INVALID", "MANIFEST_UNKNOWN", "NAME_INVALID",
    "NAME_UNKNOWN", "SIZE_INVALID", "UNAUTHORIZED", "DENIED", "UNSUPPORTED", "TOOMANYREQUESTS",
})  # fmt: skip
_CODE = re.compile(r"^[A-Z_]+$")
_WARNING = re.compile(r'^299 - "(?:[^"\\]|\\.)*"$')
_NEXT = re.compile(r'^<([^>]+)>\s*;\s*rel="?next"?$')


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def unknown_digest() -> str:
    """A well-formed digest of content nobody pushed."""
    return digest_of(secrets.token_bytes(32))


@dataclass(frozen=True, slots=True)
class Blob:
    data: bytes
    media_type: str = LAYER

    @staticmethod
    def random(size: int = 1024, media_type: str = LAYER) -> Blob:
        return Blob(secrets.token_bytes(size), media_type)

    @property
    def digest(self) -> str:
        return digest_of(self.data)

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.data)}


@dataclass(frozen=True, slots=True)
class Manifest:
    """A manifest as the exact bytes pushed, and the type it is pushed as."""

    data: bytes
    media_type: str

    @property
    def digest(self) -> str:
        return digest_of(self.data)

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": len(self.data),
            **extra,
        }


def random_config() -> Blob:
    """A small JSON config, unique per call so tests never share content by accident."""
    body = {"architecture": "amd64", "os": "linux", "conformance": secrets.token_hex(8)}
    return Blob(json.dumps(body).encode(), CONFIG)


def image_manifest(
    config: Blob,
    layers: list[Blob],
    *,
    subject: Manifest | None = None,
    artifact_type: str | None = None,
    annotations: dict[str, str] | None = None,
) -> Manifest:
    body: dict[str, Any] = {"schemaVersion": 2, "mediaType": MANIFEST}
    if artifact_type:
        body["artifactType"] = artifact_type
    body["config"] = config.descriptor()
    body["layers"] = [layer.descriptor() for layer in layers]
    if subject is not None:
        body["subject"] = subject.descriptor()
    if annotations:
        body["annotations"] = annotations
    return Manifest(json.dumps(body, indent=2).encode(), MANIFEST)


def image_index(
    manifests: list[Manifest],
    *,
    subject: Manifest | None = None,
    annotations: dict[str, str] | None = None,
) -> Manifest:
    body: dict[str, Any] = {"schemaVersion": 2, "mediaType": INDEX}
    body["manifests"] = [m.descriptor() for m in manifests]
    if subject is not None:
        body["subject"] = subject.descriptor()
    if annotations:
        body["annotations"] = annotations
    return Manifest(json.dumps(body, indent=2).encode(), INDEX)


@dataclass(frozen=True, slots=True)
class Image:
    config: Blob
    layers: list[Blob]
    manifest: Manifest

    @property
    def blobs(self) -> list[Blob]:
        return [self.config, *self.layers]


def random_image(layers: int = 1, size: int = 1024, **manifest_fields: Any) -> Image:
    config, parts = random_config(), [Blob.random(size) for _ in range(layers)]
    return Image(config, parts, image_manifest(config, parts, **manifest_fields))


async def push_blob(registry: Registry, repo: str, blob: Blob) -> Reply:
    """POST then PUT ?digest= with the whole body: the upload every client supports."""
    started = await registry.request("POST", f"/v2/{repo}/blobs/uploads/")
    assert started.status == 202, started
    done = await registry.request(
        "PUT",
        started.location(),
        query={"digest": blob.digest},
        headers=OCTETS,
        data=blob.data,
    )
    assert done.status == 201, done
    return done


async def push_manifest(registry: Registry, repo: str, reference: str, manifest: Manifest) -> Reply:
    return await registry.request(
        "PUT",
        f"/v2/{repo}/manifests/{reference}",
        headers={"Content-Type": manifest.media_type},
        data=manifest.data,
    )


async def push_image(registry: Registry, repo: str, reference: str, image: Image) -> Reply:
    """Every blob, then the manifest by `reference` (a tag or its digest); asserts 201."""
    for blob in image.blobs:
        await push_blob(registry, repo, blob)
    reply = await push_manifest(registry, repo, reference, image.manifest)
    assert reply.status == 201, reply
    return reply


async def start_upload(registry: Registry, repo: str) -> tuple[Reply, int]:
    """POST with `Content-Length: 0` (l.330), and the chunk size to use: 1000 bytes, or the
    registry's `OCI-Chunk-Min-Length` (l.336) when larger."""
    reply = await registry.request("POST", f"/v2/{repo}/blobs/uploads/", data=b"")
    assert reply.status == 202, reply
    return reply, max(1000, int(reply.headers.get("OCI-Chunk-Min-Length", "0")))


async def patch(registry: Registry, location: URL, chunk: bytes, start: int) -> Reply:
    """One chunk: `Content-Range: start-end` inclusive (l.359-365) and its length."""
    return await registry.request(
        "PATCH",
        location,
        headers={**OCTETS, "Content-Range": f"{start}-{start + len(chunk) - 1}"},
        data=chunk,
    )


async def assert_pullable_blob(registry: Registry, location: URL, blob: Blob) -> None:
    """`<blob-location>` "is a pullable blob URL" (l.286, l.318, l.410)."""
    reply = await registry.request("GET", location)
    assert reply.status == 200, reply
    assert reply.body == blob.data


async def get_manifest(registry: Registry, repo: str, reference: str, method: str = "GET") -> Reply:
    return await registry.request(method, f"/v2/{repo}/manifests/{reference}", headers=ACCEPT)


def next_link(reply: Reply) -> URL | None:
    """The `Link: <url>; rel="next"` target (RFC 5988), resolved like a Location; None
    without one. A Link of another shape fails: the spec's MUST is `rel="next"`."""
    values = reply.headers.getall("Link", [])
    if not values:
        return None
    assert len(values) == 1, reply
    match = _NEXT.match(values[0].strip())
    assert match, f'Link is not <url>; rel="next": {reply}'
    return reply.url.join(URL(match.group(1), encoded=True))


def error_codes(reply: Reply) -> list[str]:
    """The `code`s of a 4xx body, checked against the spec's shape ("Error Codes"): a JSON
    body MUST be {"errors": [{"code", "message"?, "detail"?}]} with codes from the table.
    A body in another format is allowed by the spec and yields no codes."""
    assert 400 <= reply.status < 500, reply
    try:
        body = json.loads(reply.body)
    except ValueError:
        return []
    assert isinstance(body, dict) and isinstance(body.get("errors"), list), reply
    codes = []
    for error in body["errors"]:
        assert isinstance(error, dict), reply
        code = error.get("code")
        assert isinstance(code, str) and _CODE.match(code), f"bad code {code!r}: {reply}"
        assert code in SPEC_CODES, f"{code} is not a spec error code: {reply}"
        assert isinstance(error.get("message", ""), str), reply
        codes.append(code)
    return codes


def assert_error(reply: Reply, statuses: tuple[int, ...], codes: set[str]) -> None:
    """A refusal with one of `statuses` whose JSON body names one of `codes`: the body format
    is the spec's (a MUST when JSON), the code the one the table gives for the condition,
    which clients read to tell the cases apart."""
    assert reply.status in statuses, reply
    found = error_codes(reply)
    assert set(found) & codes, f"expected one of {sorted(codes)} in {reply}"


def warning_problems(warnings: list[list[str]]) -> list[str]:
    """What breaks "Warnings" (l.829-833) in each answer's `Warning` values: each "MUST
    specify a `warn-code` of `299` and a `warn-agent` of `-`, and MUST NOT specify a
    `warn-date`"; no more than 4096 bytes of warning data in one answer."""
    problems = []
    for values in warnings:
        problems += [f'not 299 - "text": {v!r}' for v in values if not _WARNING.match(v)]
        if sum(len(v.encode()) for v in values) > 4096:
            problems.append(f"over 4096 bytes of warnings: {values!r}")
    return problems


def require(endpoint: Endpoint, feature: str) -> None:
    if not endpoint.claims(feature):
        pytest.skip(f"target does not claim {feature!r}")


def refuse(endpoint: Endpoint, feature: str) -> None:
    """For the tests of what a target that disables `feature` must answer."""
    if endpoint.claims(feature):
        pytest.skip(f"target claims {feature!r}: the enabled behaviour is tested instead")
