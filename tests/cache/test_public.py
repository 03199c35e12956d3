"""Which repositories anyone may read: learnt from an anonymous HEAD of a tag a client was
just given, kept in a real index; the upstream port faked."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from appliance.cache.public import PublicStatus
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import OCI_MANIFEST
from appliance.store.index import SqliteIndex
from tests.cache.fakes import FakeUpstream

REPO = ("ghcr.io", "org/app")
TAG = "https://ghcr.io/v2/org/app/manifests/v1"
DIGEST = Digest.of(b"the manifest of v1")
WALL = 1_700_000_000.0


@pytest.fixture
async def index(tmp_path: Path) -> AsyncIterator[SqliteIndex]:
    index = await SqliteIndex.open(tmp_path / "index.sqlite")
    yield index
    await index.close()


def status(
    upstream: FakeUpstream, index: SqliteIndex, now: list[float], offline: bool = False
) -> PublicStatus:
    return PublicStatus(
        upstream,  # type: ignore[arg-type]
        index,
        3600,
        lambda: offline,
        lambda: now[0],
        lambda: WALL + now[0],
    )


async def test_a_tag_anonymously_given_the_same_digest_makes_its_repository_public(
    index: SqliteIndex,
) -> None:
    upstream, now = FakeUpstream(), [100.0]
    upstream.add("HEAD", TAG, 200, auth="", Docker_Content_Digest=str(DIGEST))
    public = status(upstream, index, now)
    assert not public.now_public(REPO, now[0])
    public.learn_soon(REPO, TAG, DIGEST, OCI_MANIFEST)
    await asyncio.sleep(0.05)  # the probe, in the background
    assert upstream.calls == [("HEAD", TAG, {})]  # as anyone: no credentials
    assert public.now_public(REPO, now[0])
    assert await index.public_status(*REPO) == (True, WALL + 100.0)
    public.learn_soon(REPO, TAG, DIGEST, OCI_MANIFEST)
    await asyncio.sleep(0.05)
    assert len(upstream.calls) == 1  # known within the TTL: not asked again
    now[0] += 3600
    assert not public.now_public(REPO, now[0])


async def test_after_a_restart_public_status_is_read_from_the_index_with_its_age(
    index: SqliteIndex,
) -> None:
    await index.set_public_status(*REPO, True, WALL - 100)
    public = status(FakeUpstream(), index, [0.0])
    assert not public.now_public(REPO, 0.0)  # memory only: not read yet
    assert await public.public_within(REPO, 0.0, 3600)
    assert not await public.public_within(REPO, 0.0, 50)  # checked 100 s ago
    assert public.now_public(REPO, 0.0)
    assert not await public.public_within(("ghcr.io", "org/other"), 0.0, 3600)


async def test_only_an_answer_naming_the_digest_counts_and_trouble_decides_nothing(
    index: SqliteIndex,
) -> None:
    upstream, now = FakeUpstream(), [100.0]
    answers = {
        "login-page": {"status": 200, "Content_Type": "text/html"},
        "other-digest": {"status": 200, "Docker_Content_Digest": str(Digest.of(b"other"))},
        "denied": {"status": 401, "WWW_Authenticate": 'Bearer realm="x"'},
        "trouble": {"status": 503, "Retry_After": "30"},
    }
    public = status(upstream, index, now)
    for _ in range(2):
        for name, answer in answers.items():
            headers = {k: str(v) for k, v in answer.items() if k != "status"}
            url = TAG.replace("org/app", f"org/{name}")
            upstream.add("HEAD", url, int(answer["status"]), auth="", **headers)
            public.learn_soon(("ghcr.io", f"org/{name}"), url, DIGEST, "")
        await asyncio.sleep(0.05)
    for name in answers:
        assert not public.now_public(("ghcr.io", f"org/{name}"), now[0])
        assert await index.public_status("ghcr.io", f"org/{name}") is None
    asked = [url.split("/")[5] for _, url, _ in upstream.calls]
    # A refusal is known for the TTL; the rest said nothing and are asked again.
    assert sorted(asked) == sorted([*answers, "login-page", "other-digest", "trouble"])


async def test_offline_nothing_is_probed(index: SqliteIndex) -> None:
    upstream = FakeUpstream()
    upstream.add("HEAD", TAG, 200, auth="", Docker_Content_Digest=str(DIGEST))
    public = status(upstream, index, [100.0], offline=True)
    public.learn_soon(REPO, TAG, DIGEST, OCI_MANIFEST)
    await asyncio.sleep(0.05)
    assert upstream.calls == [] and not public.now_public(REPO, 100.0)
