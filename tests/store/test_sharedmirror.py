"""Mirror tags shared by two gateways through one bucket (a real S3 endpoint: moto's
server) over two real indexes: moves and pins reach the other gateway, two moves of one
tag at once lose nothing (compare-and-swap), and a bucket that does not answer leaves a
move to this gateway alone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.config.shared import S3Config, S3Credentials
from appliance.config.values import SecretRef
from appliance.mirror.records import MirroredTag, Place
from appliance.oci.digest import Digest
from appliance.store.index import SqliteIndex
from appliance.store.s3 import Bucket
from appliance.store.sharedmirror import SharedMirror, place_of
from appliance.store.tier import manifest_name
from tests.harness import free_port
from tests.s3engine import KEY_ID, SECRET, make_bucket

PLACE = Place("docker.io", "library/alpine", "3.20")
X, Y, Z = (Digest.of(name) for name in (b"x", b"y", b"z"))


def tag(digest: Digest, pin: Digest | None = None) -> MirroredTag:
    return MirroredTag(PLACE, "alpine", digest, "application/vnd.oci.image.index.v1+json",
                       100, time.time(), "network", pin)  # fmt: skip


@dataclass
class Gateway:
    index: SqliteIndex
    shared: SharedMirror

    async def serving(self) -> MirroredTag | None:
        return next((t for t in await self.index.mirrored_tags() if t.place == PLACE), None)


def config(endpoint: str, bucket: str) -> S3Config:
    return S3Config(
        endpoint=endpoint, bucket=bucket, force_path_style=True,
        credentials=S3Credentials(SecretRef(env="T_KEY_ID"), SecretRef(env="T_SECRET")),
    )  # fmt: skip


@pytest.fixture
async def gateways(
    tmp_path: Path, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Gateway, Gateway]]:
    monkeypatch.setenv("T_KEY_ID", KEY_ID)
    monkeypatch.setenv("T_SECRET", SECRET)
    bucket = make_bucket(s3_endpoint)
    a_index = await SqliteIndex.open(tmp_path / "a.sqlite")
    b_index = await SqliteIndex.open(tmp_path / "b.sqlite")
    async with (
        Bucket(config(s3_endpoint, bucket)).open() as a_bucket,
        Bucket(config(s3_endpoint, bucket)).open() as b_bucket,
    ):
        yield (Gateway(a_index, SharedMirror(a_index, a_bucket, keep_backups=3)),
               Gateway(b_index, SharedMirror(b_index, b_bucket, keep_backups=3)))  # fmt: skip
    await a_index.close()
    await b_index.close()


def steps(moves: list) -> list[tuple[Digest | None, Digest, str]]:  # type: ignore[type-arg]
    return [(m.old, m.new, m.reason) for m in moves]


async def test_a_move_made_on_one_gateway_reaches_the_other(
    gateways: tuple[Gateway, Gateway],
) -> None:
    a, b = gateways
    assert await a.shared.move_tag(tag(X), "add", expect=None, backup=None, keep_backups=3)
    assert await b.shared.converge() == 1
    assert (await b.serving()) is not None and (await b.serving()).digest == X  # type: ignore[union-attr]
    moved = await a.shared.move_tag(tag(Y), "sync", expect=X, backup="3.20-old", keep_backups=3)
    assert moved is not None and moved.backup == "3.20-old"
    assert await b.shared.converge() == 1
    assert await b.shared.converge() == 0  # nothing new: one LIST, no GET
    here = await b.serving()
    assert here is not None and here.digest == Y
    backups = [t for t in await b.index.mirrored_tags() if t.backup_of == "3.20"]
    assert [(t.place.tag, t.digest) for t in backups] == [("3.20-old", X)]
    assert steps(await b.shared.mirror_history(PLACE)) == [(None, X, "add"), (X, Y, "sync")]


async def test_two_gateways_moving_one_tag_at_once_lose_nothing(
    gateways: tuple[Gateway, Gateway],
) -> None:
    a, b = gateways
    await a.shared.move_tag(tag(X), "add", expect=None, backup=None, keep_backups=3)
    await b.shared.converge()
    expected = [(None, X, "add")]
    current = X
    for round_ in range(6):  # concurrent rounds, both expecting what is served
        targets = (Y, Z) if round_ % 2 == 0 else (Z, Y)
        if current in targets:
            targets = (X, targets[0] if current != targets[0] else targets[1])
        results = await asyncio.gather(
            a.shared.move_tag(tag(targets[0]), "pin", expect=current, backup=None, keep_backups=3),
            b.shared.move_tag(tag(targets[1]), "pin", expect=current, backup=None, keep_backups=3),
        )
        won = [r for r in results if r is not None]
        assert len(won) == 1, results  # one wins; the other is told it moved meanwhile
        expected.append((current, won[0].new, "pin"))
        loser, lost = (b, targets[1]) if results[0] is not None else (a, targets[0])
        retried = await loser.shared.move_tag(
            tag(lost), "pin", expect=won[0].new, backup=None, keep_backups=3
        )  # the person tries again, on what is served now
        assert retried is not None
        expected.append((won[0].new, lost, "pin"))
        current = lost
    for gateway in (a, b):
        await gateway.shared.converge()
        assert steps(await gateway.shared.mirror_history(PLACE)) == expected
        here = await gateway.serving()
        assert here is not None and here.digest == current


async def test_a_pin_set_on_one_gateway_holds_on_the_other(
    gateways: tuple[Gateway, Gateway],
) -> None:
    a, b = gateways
    await a.shared.move_tag(tag(X), "add", expect=None, backup=None, keep_backups=3)
    await b.shared.converge()
    assert await b.shared.set_mirror_pin(PLACE, X)
    await a.shared.converge()
    here = await a.serving()
    assert here is not None and here.pin == X
    # A sync on A that still thinks the tag unpinned loses to the pin.
    assert await a.shared.move_tag(tag(Y), "sync", expect=X, backup=None, keep_backups=3,
                                   expect_pin=None) is None  # fmt: skip
    assert await b.shared.set_mirror_pin(Place("docker.io", "library/nope", "1"), X) is False


async def test_without_the_bucket_a_move_stays_with_this_gateway(tmp_path: Path) -> None:
    index = await SqliteIndex.open(tmp_path / "alone.sqlite")
    down = S3Config(endpoint=f"http://127.0.0.1:{free_port()}", bucket="regcache",
                    force_path_style=True)  # fmt: skip
    try:
        async with Bucket(down).open() as bucket:
            shared = SharedMirror(index, bucket, keep_backups=3)
            assert await shared.move_tag(tag(X), "add", expect=None, backup=None, keep_backups=3)
            assert await shared.move_tag(tag(Y), "rollback", expect=X, backup=None,
                                         keep_backups=3)  # fmt: skip
            assert steps(await shared.mirror_history(PLACE)) == [
                (None, X, "add"), (X, Y, "rollback")
            ]  # fmt: skip
    finally:
        await index.close()


def test_object_names_map_back_to_places() -> None:
    assert place_of("mirror/tags/docker.io/library/alpine/3.20") == PLACE
    assert place_of("mirror/tags/ghcr.io/org/team/app/v1.2") == Place(
        "ghcr.io", "org/team/app", "v1.2"
    )
    assert place_of("mirror/tags/docker.io/alpine") is None


async def test_a_manifest_another_gateway_shared_can_be_moved_to(
    gateways: tuple[Gateway, Gateway],
) -> None:
    a, _ = gateways
    bucket = a.shared._bucket
    await bucket.put(
        manifest_name(Y), b"{}", content_type="application/vnd.oci.image.index.v1+json"
    )
    assert await a.shared.manifest_info(Y) == ("application/vnd.oci.image.index.v1+json", 2)
    assert await a.shared.manifest_info(Z) is None


async def test_a_gateway_behind_by_several_moves_replays_each(
    gateways: tuple[Gateway, Gateway],
) -> None:
    a, b = gateways
    await a.shared.move_tag(tag(X), "add", expect=None, backup=None, keep_backups=3)
    await b.shared.converge()
    await a.shared.move_tag(tag(Y), "sync", expect=X, backup="3.20-a", keep_backups=3)
    await a.shared.move_tag(tag(Z), "sync", expect=Y, backup="3.20-b", keep_backups=3)
    assert await b.shared.converge() == 1  # one changed tag, two moves behind
    backups = {t.place.tag: t.digest for t in await b.index.mirrored_tags() if t.backup_of}
    assert backups == {"3.20-a": X, "3.20-b": Y}  # as on A: a rollback to either works
    assert steps(await b.index.mirror_history(PLACE)) == [
        (None, X, "add"), (X, Y, "sync"), (Y, Z, "sync"),
    ]  # fmt: skip
