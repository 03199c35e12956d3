"""OCI distribution-spec conformance, the Push category: monolithic and chunked blob uploads,
upload status and cancel, cross-repository mounts, manifest PUTs and their refusals.
Citations are spec.md lines of v1.1.1 unless marked `main` (opencontainers/
distribution-spec@967efdc, after 1.1.1)."""

from __future__ import annotations

import json
import re
import secrets
import uuid
from collections.abc import Callable

import pytest

from tests.conformance.client import Endpoint, Registry
from tests.conformance.content import (
    ACCEPT,
    MANIFEST,
    OCTETS,
    Blob,
    Manifest,
    assert_error,
    assert_pullable_blob,
    digest_of,
    error_codes,
    get_manifest,
    image_manifest,
    patch,
    push_blob,
    push_image,
    push_manifest,
    random_config,
    random_image,
    require,
    start_upload,
    unknown_digest,
)

pytestmark = pytest.mark.push

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.I)


async def test_post_starts_an_upload_with_202_and_a_session_location(
    registry: Registry, repo: str
) -> None:
    """l.250, l.256 MUST: "the response MUST have a code of `202 Accepted`, and MUST include
    the following header: Location"; "The `<location>` MUST contain a UUID representing a
    unique session ID"."""
    first = await registry.request("POST", f"/v2/{repo}/blobs/uploads/")
    second = await registry.request("POST", f"/v2/{repo}/blobs/uploads/")
    assert first.status == second.status == 202, (first, second)
    ids = [_UUID.search(str(reply.location())) for reply in (first, second)]
    assert ids[0] and ids[1], (first, second)
    assert ids[0].group() != ids[1].group()


async def test_post_then_put_with_digest_creates_the_blob_201(
    registry: Registry, repo: str
) -> None:
    """l.280 MUST: the PUT to `<location>?digest=<digest>` with the body "MUST have code
    `201 Created` and MUST have the following header: Location: <blob-location>", "a pullable
    blob URL" (l.286); l.260: the upload Location may be absolute or relative."""
    blob = Blob.random(2048)
    started = await registry.request("POST", f"/v2/{repo}/blobs/uploads/")
    assert started.status == 202, started
    done = await registry.request(
        "PUT", started.location(), query={"digest": blob.digest}, headers=OCTETS, data=blob.data
    )
    assert done.status == 201, done
    await assert_pullable_blob(registry, done.location(), blob)


async def test_single_post_with_digest_creates_the_blob_or_falls_back_to_202(
    endpoint: Endpoint, registry: Registry, repo: str
) -> None:
    """l.292 MAY, l.312 MUST, l.310 SHOULD: a single POST `?digest=` with the body "MUST return
    a `201 Created` and MUST include … Location"; a registry without it "SHOULD return a
    `202 Accepted` status code and `Location` header" and the client PUTs the blob there."""
    blob = Blob.random(2048)
    reply = await registry.request(
        "POST",
        f"/v2/{repo}/blobs/uploads/",
        query={"digest": blob.digest},
        headers=OCTETS,
        data=blob.data,
    )
    allowed = (201,) if endpoint.claims("single_post") else (201, 202)
    assert reply.status in allowed, reply
    if reply.status == 202:
        reply = await registry.request(
            "PUT", reply.location(), query={"digest": blob.digest}, headers=OCTETS, data=blob.data
        )
        assert reply.status == 201, reply
    await assert_pullable_blob(registry, reply.location(), blob)


async def test_chunked_upload_is_202_per_chunk_with_range_then_201(
    registry: Registry, repo: str
) -> None:
    """l.371 MUST: "Each successful chunk upload MUST have a `202 Accepted` response code, and
    MUST have the following headers: Location, Range: 0-<end-of-range>"; l.387, l.403-405:
    the session is closed by a PUT `?digest=` of the whole blob, "MUST be `201 Created`" with
    a `Location`. Each chunk goes to the previous answer's Location (l.378)."""
    started, size = await start_upload(registry, repo)
    blob = Blob.random(size * 2 + 17)
    location = started.location()
    for start in range(0, len(blob.data), size):
        reply = await patch(registry, location, blob.data[start : start + size], start)
        assert reply.status == 202, reply
        end = min(start + size, len(blob.data)) - 1
        assert reply.headers.get("Range") == f"0-{end}", reply
        location = reply.location()
    done = await registry.request("PUT", location, query={"digest": blob.digest}, data=b"")
    assert done.status == 201, done
    await assert_pullable_blob(registry, done.location(), blob)


async def test_chunked_upload_may_send_the_final_chunk_in_the_put(
    registry: Registry, repo: str
) -> None:
    """l.386: "The final chunk MAY be uploaded using a `PATCH` request or it MAY be uploaded in
    the closing `PUT` request" (with its Content-Range and Content-Length, l.395-397)."""
    started, size = await start_upload(registry, repo)
    blob = Blob.random(size + 300)
    first = await patch(registry, started.location(), blob.data[:size], 0)
    assert first.status == 202, first
    done = await registry.request(
        "PUT",
        first.location(),
        query={"digest": blob.digest},
        headers={**OCTETS, "Content-Range": f"{size}-{len(blob.data) - 1}"},
        data=blob.data[size:],
    )
    assert done.status == 201, done
    await assert_pullable_blob(registry, done.location(), blob)


async def test_chunk_out_of_order_is_416(registry: Registry, repo: str) -> None:
    """l.382-383 MUST: "Chunks MUST be uploaded in order … If a chunk is uploaded out of order,
    the registry MUST respond with a `416 Requested Range Not Satisfiable` code." A chunk
    leaving a gap after the first, sent to the latest Location, is out of order."""
    started, size = await start_upload(registry, repo)
    first = await patch(registry, started.location(), secrets.token_bytes(size), 0)
    assert first.status == 202, first
    gap = await patch(registry, first.location(), secrets.token_bytes(size), size + 100)
    assert gap.status == 416, gap


async def test_upload_status_is_204_with_location_and_range(registry: Registry, repo: str) -> None:
    """l.418 MUST: "The response to an active upload `<location>` MUST be a `204 No Content`
    response code, and MUST have the following headers: Location, Range: 0-<end-of-range>";
    l.425: the next chunk goes to that Location, and the upload completes."""
    started, size = await start_upload(registry, repo)
    blob = Blob.random(size * 2)
    first = await patch(registry, started.location(), blob.data[:size], 0)
    assert first.status == 202, first
    status = await registry.request("GET", first.location())
    assert status.status == 204, status
    assert status.headers.get("Range") == f"0-{size - 1}", status
    second = await patch(registry, status.location(), blob.data[size:], size)
    assert second.status == 202, second
    done = await registry.request("PUT", second.location(), query={"digest": blob.digest})
    assert done.status == 201, done
    await assert_pullable_blob(registry, done.location(), blob)


async def test_upload_status_answers_at_the_post_location_after_a_patch(
    registry: Registry, repo: str
) -> None:
    """l.414-418: status is asked of "the URL obtained from any preceding `POST` or `PATCH`
    request" and "MUST be a `204 No Content`" with the current Range, as after a lost
    answer, when the client knows only the POST's Location."""
    started, size = await start_upload(registry, repo)
    first = await patch(registry, started.location(), secrets.token_bytes(size), 0)
    assert first.status == 202, first
    status = await registry.request("GET", started.location())
    assert status.status == 204, status
    assert status.headers.get("Range") == f"0-{size - 1}", status


async def test_cancelled_upload_is_204_then_404(registry: Registry, repo: str) -> None:
    """main l.436-449 SHOULD: a DELETE of the upload location "SHOULD be a `204 No Content`";
    the session is then gone: status (end-13) is 404, code-3 `BLOB_UPLOAD_UNKNOWN`."""
    started, size = await start_upload(registry, repo)
    first = await patch(registry, started.location(), secrets.token_bytes(size), 0)
    assert first.status == 202, first
    cancel = await registry.request("DELETE", first.location(), data=b"")
    assert cancel.status == 204, cancel
    status = await registry.request("GET", first.location())
    assert_error(status, (404,), {"BLOB_UPLOAD_UNKNOWN"})


async def test_unknown_upload_session_is_404_blob_upload_unknown(
    registry: Registry, repo: str
) -> None:
    """end-13 failure `404` for a session id the registry never gave; the code is code-3
    `BLOB_UPLOAD_UNKNOWN` or code-2 `BLOB_UPLOAD_INVALID` (the spec binds no code to the
    endpoint; distribution refuses the Location's missing state first)."""
    await push_blob(registry, repo, Blob.random(10))
    reply = await registry.request("GET", f"/v2/{repo}/blobs/uploads/{uuid.uuid4()}")
    assert_error(reply, (404,), {"BLOB_UPLOAD_UNKNOWN", "BLOB_UPLOAD_INVALID"})


async def test_blob_put_with_a_digest_that_does_not_match_is_400_digest_invalid(
    registry: Registry, repo: str
) -> None:
    """l.308: "the `<digest>` MUST match the blob's digest"; end-6 failure `400`; code-4
    `DIGEST_INVALID` "provided digest did not match uploaded content". Nothing is stored."""
    blob, claimed = Blob.random(500), unknown_digest()
    started = await registry.request("POST", f"/v2/{repo}/blobs/uploads/")
    assert started.status == 202, started
    reply = await registry.request(
        "PUT", started.location(), query={"digest": claimed}, headers=OCTETS, data=blob.data
    )
    assert_error(reply, (400,), {"DIGEST_INVALID"})
    for digest in (claimed, blob.digest):
        head = await registry.request("HEAD", f"/v2/{repo}/blobs/{digest}")
        assert head.status == 404, head


async def test_blob_put_with_a_malformed_digest_is_400(registry: Registry, repo: str) -> None:
    """main l.229 SHOULD: "if the client provided digest is invalid or uses an unsupported
    algorithm, the registry SHOULD respond with a response code `400 Bad Request`"."""
    started = await registry.request("POST", f"/v2/{repo}/blobs/uploads/")
    assert started.status == 202, started
    reply = await registry.request(
        "PUT", started.location(), query={"digest": "sha256:not-hex"}, headers=OCTETS, data=b"x"
    )
    assert reply.status == 400, reply
    error_codes(reply)


async def test_mount_from_another_repository_is_201_with_the_blob_location(
    endpoint: Endpoint, registry: Registry, repo: str, new_repo: Callable[[], str]
) -> None:
    """l.440 MUST: "The response to a successful mount MUST be `201 Created`, and MUST contain
    the following header: Location: <blob-location>"; l.446: `Docker-Content-Digest`, if
    sent, is the blob's."""
    require(endpoint, "mount")
    source, blob = new_repo(), Blob.random(700)
    await push_blob(registry, source, blob)
    reply = await registry.request(
        "POST", f"/v2/{repo}/blobs/uploads/", query={"mount": blob.digest, "from": source}
    )
    assert reply.status == 201, reply
    assert reply.headers.get("Docker-Content-Digest", blob.digest) == blob.digest, reply
    await assert_pullable_blob(registry, reply.location(), blob)
    assert reply.location().path == f"/v2/{repo}/blobs/{blob.digest}"


async def test_mount_of_an_unknown_blob_falls_back_to_an_upload_202(
    registry: Registry, repo: str, new_repo: Callable[[], str]
) -> None:
    """l.451-452 SHOULD: a registry "unable to mount the requested blob … SHOULD return a
    `202`. This indicates that the upload session has begun": its Location takes the PUT."""
    source, blob = new_repo(), Blob.random(300)
    await push_blob(registry, source, Blob.random(10))
    reply = await registry.request(
        "POST", f"/v2/{repo}/blobs/uploads/", query={"mount": blob.digest, "from": source}
    )
    assert reply.status == 202, reply
    done = await registry.request(
        "PUT", reply.location(), query={"digest": blob.digest}, headers=OCTETS, data=blob.data
    )
    assert done.status == 201, done
    await assert_pullable_blob(registry, done.location(), blob)


@pytest.mark.parametrize("by", ["tag", "digest"])
async def test_manifest_put_is_201_with_location_and_docker_content_digest(
    registry: Registry, repo: str, by: str
) -> None:
    """l.475, l.481 MUST: by tag or digest, "the registry MUST return response code `201
    Created`, and MUST have the following header: Location", "a pullable manifest URL"
    (l.487); l.488: `Docker-Content-Digest` "MUST be equal to the client provided digest"."""
    image = random_image()
    for blob in image.blobs:
        await push_blob(registry, repo, blob)
    reference = "v1" if by == "tag" else image.manifest.digest
    reply = await push_manifest(registry, repo, reference, image.manifest)
    assert reply.status == 201, reply
    assert reply.headers.get("Docker-Content-Digest") == image.manifest.digest, reply
    pulled = await get_manifest(registry, repo, reference)
    at_location = await registry.request("GET", reply.location(), headers=ACCEPT)
    assert at_location.status == pulled.status == 200, (at_location, pulled)
    assert at_location.body == pulled.body == image.manifest.data


async def test_manifest_is_stored_in_its_exact_bytes(registry: Registry, repo: str) -> None:
    """l.480 MUST: "The registry MUST store the manifest in the exact byte representation
    provided by the client" (odd whitespace and key order, a trailing newline)."""
    config, layer = random_config(), Blob.random(64)
    for blob in (config, layer):
        await push_blob(registry, repo, blob)
    layers, config_text = json.dumps(layer.descriptor()), json.dumps(config.descriptor())
    text = (
        f'{{\n\t"layers" : [ {layers} ],\n   "config":{config_text},'
        f'"mediaType":\t"{MANIFEST}",\n"schemaVersion" :2 }}\n\n'
    )
    manifest = Manifest(text.encode(), MANIFEST)
    reply = await push_manifest(registry, repo, "odd", manifest)
    assert reply.status == 201, reply
    for reference in ("odd", manifest.digest):
        pulled = await get_manifest(registry, repo, reference)
        assert pulled.status == 200, pulled
        assert pulled.body == manifest.data


async def test_manifest_naming_a_missing_blob_is_400_manifest_blob_unknown(
    endpoint: Endpoint, registry: Registry, repo: str
) -> None:
    """l.224-225: a registry MAY reject a manifest whose descriptors name a blob it lacks;
    "When a manifest is rejected for this reason, it MUST result in one or more
    `MANIFEST_BLOB_UNKNOWN` errors". A target claiming `reference_check` must reject."""
    config, missing = random_config(), Blob.random(100)
    await push_blob(registry, repo, config)
    reply = await push_manifest(registry, repo, "v1", image_manifest(config, [missing]))
    if reply.status == 201 and not endpoint.claims("reference_check"):
        return
    assert_error(reply, (400,), {"MANIFEST_BLOB_UNKNOWN"})


async def test_manifest_with_a_subject_that_does_not_exist_is_accepted(
    registry: Registry, repo: str
) -> None:
    """l.223 MUST: "A registry MUST initially accept an otherwise valid manifest with a
    `subject` field that references a manifest that does not exist in the repository"."""
    absent = random_image().manifest
    image = random_image(subject=absent, artifact_type="application/vnd.conformance.test")
    for blob in image.blobs:
        await push_blob(registry, repo, blob)
    reply = await push_manifest(registry, repo, image.manifest.digest, image.manifest)
    assert reply.status == 201, reply
    pulled = await get_manifest(registry, repo, image.manifest.digest)
    assert pulled.status == 200 and pulled.body == image.manifest.data, pulled


async def test_manifest_put_by_a_digest_that_does_not_match_is_400_digest_invalid(
    registry: Registry, repo: str
) -> None:
    """l.475, l.488: the digest a manifest is pushed by names its bytes; code-4
    `DIGEST_INVALID` "provided digest did not match uploaded content" (400, as the official
    conformance suite expects). Nothing is stored under that digest."""
    image, claimed = random_image(), unknown_digest()
    for blob in image.blobs:
        await push_blob(registry, repo, blob)
    reply = await push_manifest(registry, repo, claimed, image.manifest)
    assert_error(reply, (400,), {"DIGEST_INVALID"})
    assert (await get_manifest(registry, repo, claimed, "HEAD")).status == 404


async def test_manifest_of_4_megabytes_is_accepted(registry: Registry, repo: str) -> None:
    """l.495 SHOULD: "Client and registry implementations SHOULD expect to be able to support
    manifest pushes of at least 4 megabytes"."""
    padding = "x" * (4_000_000 - 1000)
    image = random_image(annotations={"org.conformance.padding": padding})
    assert len(image.manifest.data) >= 4_000_000 - 500
    reply = await push_image(registry, repo, "big", image)
    assert reply.status == 201
    pulled = await get_manifest(registry, repo, "big")
    assert pulled.status == 200 and digest_of(pulled.body) == image.manifest.digest, pulled


async def test_a_tag_of_128_characters_is_accepted(registry: Registry, repo: str) -> None:
    """l.164-166: a tag "MUST be at most 128 characters in length and MUST match"
    `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`: the longest, with every allowed character, works."""
    tag = ("_Aa0.-" * 22)[:128]
    assert re.fullmatch(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}", tag) and len(tag) == 128
    image = random_image()
    await push_image(registry, repo, tag, image)
    pulled = await get_manifest(registry, repo, tag)
    assert pulled.status == 200 and pulled.body == image.manifest.data, pulled


async def test_a_repository_name_with_every_separator_is_accepted(
    endpoint: Endpoint, registry: Registry
) -> None:
    """l.155-157: `<name>` matches `[a-z0-9]+((\\.|_|__|-+)[a-z0-9]+)*(\\/[a-z0-9]+(…)*)*`:
    components joined by `.`, `_`, `__` and runs of `-`, several `/` deep, all work."""
    name = f"{endpoint.namespace}/a.b_c__d---e/{secrets.token_hex(3)}/f0-9"
    image = random_image()
    await push_image(registry, name, "v1", image)
    pulled = await get_manifest(registry, name, "v1")
    assert pulled.status == 200 and pulled.body == image.manifest.data, pulled
    blob = await registry.request("GET", f"/v2/{name}/blobs/{image.layers[0].digest}")
    assert blob.status == 200 and blob.body == image.layers[0].data, blob
