"""Pushes kept on their way upstream: a blob's bytes teed and committed only when they
hash to the digest upstream accepted; anything else leaves nothing behind and never
disturbs the push."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

from appliance.cache.service import RegistryCache
from appliance.cache.uploads import MAX_SESSIONS, SESSION_TTL_S, Uploads
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import OCI_MANIFEST
from appliance.store.files import FileBlobStore
from tests.cache.fakes import FakeUpstream

HOST, REPO = "ghcr.io", "org/app"
PLACE = (HOST, REPO)
ALICE = "Bearer alice"


async def chunks(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


async def teed(uploads: Uploads, *pieces: bytes) -> tuple[list[bytes], object]:
    upload = uploads.begin()
    passed = [c async for c in uploads.tee(upload, chunks(*pieces))]
    return passed, upload


def temp_files(root: Path) -> list[Path]:
    """Temp files left in the store (`FileBlobStore(root)` keeps them in root/tmp)."""
    return list((root / "tmp").iterdir())


async def test_a_blob_whose_bytes_hash_to_the_accepted_digest_is_kept_for_its_pusher(
    parts: tuple[RegistryCache, FakeUpstream, FileBlobStore], tmp_path: Path
) -> None:
    cache, _, files = parts
    pieces = (os.urandom(100_000), os.urandom(50))
    digest = Digest.of(b"".join(pieces))
    passed, upload = await teed(cache.uploads, *pieces)
    assert passed == list(pieces)  # the push's bytes, unchanged
    assert await cache.uploads.finish(upload, digest, PLACE, ALICE)  # type: ignore[arg-type]
    assert files.path_for(digest).read_bytes() == b"".join(pieces)
    assert files.size_of(digest) == len(b"".join(pieces))
    gate = cache._gate  # the pusher may have it through that repository at once
    assert gate.vouches(HOST, REPO, digest, ALICE) and not gate.vouches(HOST, REPO, digest, None)
    assert not gate.vouches(HOST, "org/other", digest, ALICE)
    assert temp_files(tmp_path) == []


async def test_bytes_that_are_not_the_accepted_digest_are_not_kept(
    parts: tuple[RegistryCache, FakeUpstream, FileBlobStore], tmp_path: Path
) -> None:
    cache, _, files = parts
    _, upload = await teed(cache.uploads, b"what passed")
    assert not await cache.uploads.finish(upload, Digest.of(b"something else"), PLACE, ALICE)  # type: ignore[arg-type]
    assert files.size_of(Digest.of(b"what passed")) is None and temp_files(tmp_path) == []


async def test_a_write_that_fails_still_passes_every_byte_and_keeps_nothing(
    parts: tuple[RegistryCache, FakeUpstream, FileBlobStore], tmp_path: Path
) -> None:
    cache, _, _ = parts
    upload = cache.uploads.begin()
    assert upload.temp is not None
    os.close(upload.temp.fd)  # type: ignore[attr-defined]  # the disk goes away under it
    passed = [c async for c in cache.uploads.tee(upload, chunks(b"a", b"b"))]
    assert passed == [b"a", b"b"] and upload.broken is not None
    upload.temp.fd = os.open(os.devnull, os.O_WRONLY)  # type: ignore[attr-defined]
    assert not await cache.uploads.finish(upload, Digest.of(b"ab"), PLACE, ALICE)
    assert temp_files(tmp_path) == []


async def test_sessions_are_bounded_in_number_and_age_their_files_removed(
    parts: tuple[RegistryCache, FakeUpstream, FileBlobStore], tmp_path: Path
) -> None:
    cache, _, files = parts
    now = [0.0]
    uploads = Uploads(files, cache._index, cache._gate, cache._shelf, cache.keep_manifest,
                      clock=lambda: now[0])  # fmt: skip
    for n in range(MAX_SESSIONS + 1):
        upload = uploads.begin()
        uploads.register((HOST, REPO, f"u{n}"), upload)
        uploads.release(upload)  # its request is over: the session waits for the next
    assert uploads.claim((HOST, REPO, "u0")) is None  # the oldest made room
    assert uploads.claim((HOST, REPO, f"u{MAX_SESSIONS}")) is not None  # (now busy)
    assert len(temp_files(tmp_path)) == MAX_SESSIONS
    now[0] = SESSION_TTL_S + 1
    assert uploads.claim((HOST, REPO, "u1")) is None  # abandoned: expired
    assert len(temp_files(tmp_path)) == 1  # only the busy one: its owner ends it


async def test_an_upload_holds_room_under_the_bound_and_is_not_kept_without_it(
    parts: tuple[RegistryCache, FakeUpstream, FileBlobStore], tmp_path: Path
) -> None:
    cache, _, files = parts

    class Tight:
        held = 0

        def nudge(self, *, added: int = 0, urgent: bool = False) -> None:
            pass

        async def hold(self, size: int) -> bool:
            if self.held + size > 100 << 20:
                return False
            self.held += size
            return True

        def release(self, size: int) -> None:
            self.held -= size

    space = Tight()
    uploads = Uploads(files, cache._index, cache._gate, cache._shelf, cache.keep_manifest, space)
    upload = uploads.begin()
    big = os.urandom(1 << 20)
    passed = [c async for c in uploads.tee(upload, chunks(*[big] * 3))]
    assert len(passed) == 3 and space.held > 0
    assert await uploads.finish(upload, Digest.of(big * 3), PLACE, ALICE)
    assert space.held == 0  # counted as stored from now (the shelf's nudge)
    space.held = 100 << 20  # the bound is reached
    upload = uploads.begin()
    assert [c async for c in uploads.tee(upload, chunks(b"more"))] == [b"more"]
    assert upload.broken == "no room under the store's bound"
    assert not await uploads.finish(upload, Digest.of(b"more"), PLACE, ALICE)
    assert temp_files(tmp_path) == []


async def test_a_pushed_manifest_is_stored_byte_exact_if_it_is_the_digest(
    parts: tuple[RegistryCache, FakeUpstream, FileBlobStore],
) -> None:
    cache, _, _ = parts
    body = b'{"schemaVersion": 2, "mediaType": "' + OCI_MANIFEST.encode() + b'", "layers": []}'
    digest = Digest.of(body)
    assert not await cache.uploads.manifest(PLACE, Digest.of(b"other"), body, OCI_MANIFEST, ALICE)
    assert await cache.manifest_body(digest) is None
    assert await cache.uploads.manifest(PLACE, digest, body, OCI_MANIFEST, ALICE)
    assert await cache.manifest_body(digest) == (body, OCI_MANIFEST)
