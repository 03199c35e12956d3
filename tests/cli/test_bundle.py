"""`regcache export` / `regcache import` through the command line on real stores: an image
the cache holds, exported and imported into another gateway, is served there as a pinned
mirror entry (history reason `import`); `--list`, `--dry-run`, `--access` and the errors
a person meets (nothing named, no `--out`, a bundle that is no layout)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance import cli
from appliance.cache.ports import TagRow
from appliance.mirror.records import Place
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import OCI_MANIFEST
from appliance.store.files import FileBlobStore
from appliance.store.index import SqliteIndex
from appliance.store.reconcile import INDEX_NAME
from tests.harness import write_config
from tests.store.stock import Store

APP = Place("ghcr.io", "org/app", "v1")


@dataclass
class Gateway:
    config: Path
    store: Store


@dataclass
class Ran:
    code: int
    out: str
    err: str


@pytest.fixture
async def gateways(tmp_path: Path) -> AsyncIterator[tuple[Gateway, Gateway]]:
    made = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        rc = write_config(tmp_path / name)
        files = FileBlobStore(rc.state_dir)
        files.prepare()
        index = await SqliteIndex.open(rc.state_dir / INDEX_NAME)
        made.append(Gateway(rc.config_path, Store(rc.state_dir, files, index)))
    yield made[0], made[1]
    for gateway in made:
        await gateway.store.index.close()


async def run(capsys: pytest.CaptureFixture[str], gateway: Gateway, *args: str) -> Ran:
    capsys.readouterr()
    code = await asyncio.to_thread(cli.main, ["--config", str(gateway.config), *args])
    out, err = capsys.readouterr()
    return Ran(code, out, err)


async def cached(gateway: Gateway, seed: bytes = b"") -> Digest:
    """ghcr.io/org/app:v1 as the cache maps it (pulled through this gateway)."""
    store = gateway.store
    config, layer = await store.blob(b"{}" + seed), await store.blob(b"layer" * 1000 + seed)
    digest = Digest.parse(await store.manifest([config, layer], repo="org/app"))
    size = store.files.size_of(digest) or 0
    await store.index.set_tag("ghcr.io", "org/app", "v1", "k",
                              TagRow(digest, OCI_MANIFEST, size, time.time()))  # fmt: skip
    return digest


async def test_an_exported_image_is_served_from_the_other_gateways_mirror_pinned(
    gateways: tuple[Gateway, Gateway], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = gateways
    digest = await cached(a)
    bundle = tmp_path / "app.tar"
    ran = await run(capsys, a, "export", "ghcr.io/org/app:v1", "--out", str(bundle))
    assert ran.code == 0, ran
    assert "1 images, 3 blobs" in ran.err
    listed = await run(capsys, a, "export", "--list", str(bundle))
    assert "ghcr.io/org/app:v1" in listed.out and str(digest) in listed.out
    dry = await run(capsys, b, "import", str(bundle), "--dry-run")
    assert dry.code == 0 and "would store 3 new blobs" in dry.out
    assert await b.store.index.mirrored_tags() == []  # a dry run changes nothing
    ran = await run(capsys, b, "import", str(bundle))
    assert ran.code == 0, ran
    (tag,) = await b.store.index.mirrored_tags()
    assert (tag.place, tag.digest, tag.pin, tag.access) == (APP, digest, digest, "network")
    assert [m.reason for m in await b.store.index.mirror_history(APP)] == ["import"]
    assert b.store.on_disk() == a.store.on_disk()
    assert (b.store.root / "mirror.json").exists()  # journalled for a rebuilt index


async def test_importing_again_after_a_move_keeps_the_old_digest_as_a_backup(
    gateways: tuple[Gateway, Gateway], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = gateways
    first = await cached(a)
    await run(capsys, a, "export", "ghcr.io/org/app:v1", "--out", str(tmp_path / "one"))
    await run(capsys, b, "import", str(tmp_path / "one"), "--access", "upstream")
    second = await cached(a, b"2")  # the tag moved on A
    assert second != first
    await run(capsys, a, "export", "ghcr.io/org/app:v1", "--out", str(tmp_path / "two"))
    ran = await run(capsys, b, "import", str(tmp_path / "two"))
    assert ran.code == 0, ran
    tags = {t.place.tag: t for t in await b.store.index.mirrored_tags()}
    assert tags["v1"].digest == second and tags["v1"].pin == second
    (backup,) = [t for t in tags.values() if t.backup_of == "v1"]
    assert backup.digest == first
    assert [m.reason for m in await b.store.index.mirror_history(APP)] == ["import", "import"]


async def test_mistakes_are_told_plainly(
    gateways: tuple[Gateway, Gateway], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = gateways
    assert (await run(capsys, a, "export", "--out", str(tmp_path / "x.tar"))).code == 2
    ran = await run(capsys, a, "export", "ghcr.io/org/app:v1")
    assert ran.code == 2 and "--out" in ran.err
    ran = await run(capsys, a, "export", "ghcr.io/org/none:v1", "--out", str(tmp_path / "y"))
    assert ran.code == 2 and "not in the cache" in ran.err
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "index.json").write_text(json.dumps({"manifests": []}))
    ran = await run(capsys, b, "import", str(tmp_path / "junk"))
    assert ran.code == 2 and "not an OCI image layout" in ran.err
    assert "the store is unchanged" in ran.err


async def test_since_alone_takes_every_tag_and_import_runs_only_as_the_stores_owner(
    gateways: tuple[Gateway, Gateway],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a, b = gateways
    await cached(a)
    ran = await run(capsys, a, "export", "--since", "1d", "--out", str(tmp_path / "s.tar"))
    assert ran.code == 0 and "1 images" in ran.err, ran
    owner = b.store.root.stat().st_uid
    monkeypatch.setattr("appliance.cli.bundle.os.geteuid", lambda: owner + 1)
    ran = await run(capsys, b, "import", str(tmp_path / "s.tar"))
    assert ran.code == 2 and f"(uid {owner})" in ran.err
    assert await b.store.index.mirrored_tags() == []
