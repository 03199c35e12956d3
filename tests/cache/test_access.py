"""No private content to the wrong client: checks per repository and per credential."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from appliance.cache.access import AccessGate, fingerprint
from appliance.cache.service import Filling, RegistryCache, Relayed, Stored, Target
from appliance.oci.digest import Digest
from appliance.store.files import FileBlobStore
from appliance.store.index import SqliteIndex
from tests.cache.fakes import FakeUpstream

ORIGIN = "https://registry-1.docker.io"
LAYER = b"shared layer " * 1000
DIGEST = Digest.of(LAYER)
PRIVATE = f"{ORIGIN}/v2/acme/secret/blobs/{DIGEST}"
PUBLIC = f"{ORIGIN}/v2/library/base/blobs/{DIGEST}"
DENIED = '{"errors":[{"code":"UNAUTHORIZED"}]}'


def as_(repository: str, token: str | None) -> Target:
    headers = {"Authorization": token} if token else {}
    return Target(ORIGIN, repository, headers, frozenset())


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[tuple[RegistryCache, FakeUpstream, list[float]]]:
    files = FileBlobStore(tmp_path)
    files.prepare()
    index = await SqliteIndex.open(tmp_path / "index.sqlite")
    upstream = FakeUpstream()
    now = [1000.0]
    for method in ("HEAD", "GET"):  # private: only alice's token; anonymous and others refused
        upstream.add(method, PRIVATE, 200, LAYER if method == "GET" else b"", auth="Bearer alice",
                     Content_Length=str(len(LAYER)))  # fmt: skip
        upstream.add(method, PRIVATE, 401, DENIED.encode() if method == "GET" else b"",
                     WWW_Authenticate='Bearer realm="https://auth.docker.io/token"')  # fmt: skip
        upstream.add(method, PUBLIC, 200, LAYER if method == "GET" else b"",
                     Content_Length=str(len(LAYER)))  # fmt: skip
    gate = AccessGate(upstream, verified_ttl_s=300, public_ttl_s=3600, clock=lambda: now[0])  # type: ignore[arg-type]
    yield RegistryCache(files, index, upstream, gate), upstream, now  # type: ignore[arg-type]
    await index.close()


async def fill_privately(cache: RegistryCache) -> None:
    answer = await cache.blob(as_("acme/secret", "Bearer alice"), DIGEST, head=False)
    assert isinstance(answer, Filling)
    assert b"".join([c async for c in answer.fill.stream(0, len(LAYER))]) == LAYER
    for _ in range(100):
        if isinstance(
            await cache.blob(as_("acme/secret", "Bearer alice"), DIGEST, head=True), Stored
        ):
            return
        await asyncio.sleep(0.01)


@pytest.mark.parametrize(
    "token", [None, "Bearer mallory"], ids=["no-credentials", "wrong-credentials"]
)
@pytest.mark.parametrize("head", [False, True], ids=["GET", "HEAD"])
async def test_stored_private_blob_is_refused_to_others(setup, token, head) -> None:  # type: ignore[no-untyped-def]
    cache, _, _ = setup
    await fill_privately(cache)
    answer = await cache.blob(as_("acme/secret", token), DIGEST, head=head)
    assert isinstance(answer, Relayed) and answer.reply.status == 401
    body = await answer.reply.read(1 << 20)
    assert LAYER not in body


async def test_same_digest_is_served_through_the_public_repository(setup) -> None:  # type: ignore[no-untyped-def]
    cache, upstream, _ = setup
    await fill_privately(cache)
    gets = upstream.count("GET")
    answer = await cache.blob(as_("library/base", None), DIGEST, head=False)
    assert isinstance(answer, Stored) and upstream.count("GET") == gets  # public: from the store
    denied = await cache.blob(as_("acme/secret", None), DIGEST, head=False)
    assert isinstance(denied, Relayed)  # the check is on the repository in the request


async def test_a_verified_credential_is_remembered_for_a_bounded_time(setup) -> None:  # type: ignore[no-untyped-def]
    cache, upstream, now = setup
    await fill_privately(cache)
    heads = upstream.count("HEAD")
    assert isinstance(
        await cache.blob(as_("acme/secret", "Bearer alice"), DIGEST, head=False), Stored
    )
    assert upstream.count("HEAD") == heads  # proven by its own fetch moments ago
    now[0] += 301
    assert isinstance(
        await cache.blob(as_("acme/secret", "Bearer alice"), DIGEST, head=False), Stored
    )
    alice_heads = [c for c in upstream.calls if c[0] == "HEAD" and c[2].get("Authorization")]
    assert len(alice_heads) == 1  # expired: her credential was asked about upstream again


async def test_followers_of_a_private_fill_are_checked(setup) -> None:  # type: ignore[no-untyped-def]
    cache, upstream, _ = setup
    gate = upstream.routes[("GET", PRIVATE, "Bearer alice")]
    gate.gate = asyncio.Event()
    leader = await cache.blob(as_("acme/secret", "Bearer alice"), DIGEST, head=False)
    assert isinstance(leader, Filling)
    follower = await cache.blob(as_("acme/secret", "Bearer mallory"), DIGEST, head=False)
    assert isinstance(follower, Relayed) and follower.reply.status == 401
    gate.gate.set()


def test_credentials_are_kept_as_fingerprints_only() -> None:
    assert fingerprint("Bearer alice") != "Bearer alice" and len(fingerprint("Bearer alice")) == 32
    assert fingerprint(None) == "" == fingerprint("")
