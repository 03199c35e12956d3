"""`regcache cache ls|du|pin|rm` on a real store, through the command line."""

from __future__ import annotations

import json
from pathlib import Path

from appliance.store.files import FileBlobStore
from appliance.store.index import SqliteIndex
from appliance.store.reconcile import INDEX_NAME
from tests.harness import Regcache, write_config
from tests.store.stock import Store


async def _stocked(tmp_path: Path) -> tuple[Regcache, str]:
    """A config whose store holds one image pulled from ghcr.io/org/app."""
    rc = write_config(tmp_path)
    files = FileBlobStore(rc.state_dir)
    files.prepare()
    index = await SqliteIndex.open(rc.state_dir / INDEX_NAME)
    try:
        store = Store(rc.state_dir, files, index)
        layers = [await store.blob(b"config"), await store.blob(b"layer" * 1000)]
        manifest = await store.manifest(layers, repo="org/app")
    finally:
        await index.close()
    return rc, manifest


async def test_ls_and_du_show_what_the_store_holds(tmp_path: Path) -> None:
    rc, manifest = await _stocked(tmp_path)
    images = json.loads(rc.cli("cache", "ls", "--json").stdout)
    assert [(i["registry"], i["repository"], i["digest"]) for i in images] == [
        ("ghcr.io", "org/app", manifest)
    ]
    usage = json.loads(rc.cli("cache", "du", "--json").stdout)
    assert usage["blobs"] == 3 and usage["registries"][0]["registry"] == "ghcr.io"
    table = rc.cli("cache", "ls").stdout.splitlines()
    assert table[0].startswith("REGISTRY") and "org/app" in table[1]


async def test_a_pinned_image_is_kept_from_rm_without_force(tmp_path: Path) -> None:
    rc, manifest = await _stocked(tmp_path)
    pinned = json.loads(rc.cli("cache", "pin", f"ghcr.io/org/app@{manifest}", "--json").stdout)
    assert pinned == {"pinned": ["ghcr.io/org/app"], "reference": manifest, "changed": True}
    refused = rc.cli("cache", "rm", f"ghcr.io/org/app@{manifest}", check=False)
    assert refused.returncode == 2 and "pinned" in refused.stderr
    removed = rc.cli("cache", "rm", f"ghcr.io/org/app@{manifest}", "--force", "--json")
    assert json.loads(removed.stdout)["rows"] >= 1
    assert json.loads(rc.cli("cache", "ls", "--json").stdout) == []


def test_a_bad_reference_or_no_store_is_a_clear_error(tmp_path: Path) -> None:
    rc = write_config(tmp_path)
    absent = rc.cli("cache", "ls", check=False)
    assert absent.returncode == 1 and "no store at" in absent.stderr
    rc.state_dir.mkdir(parents=True)
    (rc.state_dir / INDEX_NAME).touch()
    bad = rc.cli("cache", "rm", "ghcr.io/org/app@sha256:nothex", check=False)
    assert bad.returncode == 2 and bad.stderr.startswith("regcache: ")
