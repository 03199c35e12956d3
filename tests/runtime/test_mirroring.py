"""The managed mirror's parts as regcache builds them: a view keyed like the config's
registries, budgets fed by every upstream answer beside the metrics, and a mirror whose
entries are the configured and added ones and which spends, per registry, the budget of
the identity it uses there (regcache's credentials, lent or not, else anonymous); its
figures on `/metrics` and its rows journalled beside the index."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from appliance.admin.metrics import Metrics
from appliance.cache.access import AccessGate
from appliance.cache.service import RegistryCache
from appliance.config.model import Config, parse_config
from appliance.config.registries import Registries
from appliance.mirror.budget import Budgets
from appliance.mirror.records import MirroredTag, Place
from appliance.mirror.scheduler import Mirror
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import OCI_MANIFEST
from appliance.runtime.mirroring import build_mirror, feeding, mirror_view
from appliance.store.files import FileBlobStore
from appliance.store.index import SqliteIndex
from tests.cache.fakes import FakeUpstream
from tests.mirror.images import image, serve

CONFIG = """\
appliance: {ipv4: 192.0.2.10}
state_dir: STATE
registries:
  - name: docker.io
    hosts: [registry-1.docker.io, index.docker.io]
  - name: ghcr.io
    hosts: [ghcr.io]
    credentials: {method: static, token: {env: GHCR_TOKEN}, lend: false}
mirror:
  defaults: {ratelimit: {min: 5, retry: 5m}}
  entries:
    - source: alpine:3.20
    - source: ghcr.io/org/app:v1
"""


@pytest.fixture
def config(tmp_path: Path) -> Config:
    (tmp_path / "state").mkdir()
    text = CONFIG.replace("STATE", str(tmp_path / "state"))
    return parse_config(text, tmp_path / "config.yaml")


def test_the_view_knows_a_registry_by_every_name_of_its_hosts(config: Config) -> None:
    view = mirror_view(Registries.of(config))
    digest = Digest.of(b"m")
    place = Place("docker.io", "library/alpine", "3.20")
    view.load([MirroredTag(place, "alpine:3.20", digest, OCI_MANIFEST, 1, 1.0, "network")], {})
    for host in ("registry-1.docker.io", "index.docker.io"):
        found = view.tag(host, "alpine", "3.20")
        assert found is not None and found.digest == digest
    assert view.tag("ghcr.io", "library/alpine", "3.20") is None


def test_every_answer_feeds_the_metrics_and_the_budgets() -> None:
    seen: list[tuple[Any, ...]] = []
    budgets = Budgets(clock=lambda: 7.0)
    on_reply = feeding(budgets, lambda *args: seen.append(args))
    url = "https://registry-1.docker.io/v2/library/alpine/manifests/3.20"
    headers = {"ratelimit-remaining": "42;w=21600"}
    on_reply("HEAD", url, 200, "anonymous", headers)
    on_reply("GET", url, 200, "clients", {"ratelimit-remaining": "1;w=21600"})
    assert seen == [("HEAD", url, 200, "anonymous", headers),
                    ("GET", url, 200, "clients", {"ratelimit-remaining": "1;w=21600"})]  # fmt: skip
    assert [(b.registry, b.credential, b.remaining) for b in budgets.all()] == [
        ("registry-1.docker.io", "anonymous", 42)
    ]


@pytest.fixture
async def built(
    tmp_path: Path, config: Config
) -> AsyncIterator[tuple[Mirror, SqliteIndex, FakeUpstream, Budgets, list[dict[str, Any]],
                         Metrics]]:  # fmt: skip
    registries = Registries.of(config)
    files = FileBlobStore(tmp_path)
    files.prepare()
    index = await SqliteIndex.open(tmp_path / "index.sqlite")
    upstream = FakeUpstream()
    view, budgets = mirror_view(registries), Budgets()
    cache = RegistryCache(files, index, upstream, AccessGate(upstream, mirror=view),  # type: ignore[arg-type]
                          mirror=view)  # fmt: skip
    audit: list[dict[str, Any]] = []
    metrics = Metrics()
    mirror = build_mirror(config, registries, index, cache, upstream, view, budgets,  # type: ignore[arg-type]
                          audit.append, metrics)  # fmt: skip
    yield mirror, index, upstream, budgets, audit, metrics
    await mirror.close()
    await index.close()


async def test_the_entries_are_the_configured_then_the_added_ones(built) -> None:  # type: ignore[no-untyped-def]
    mirror, index, *_ = built
    await index.add_entry("quay.io/org/tool:1", "network")  # no such registry: left out
    await index.add_entry("busybox:1.36", "network")
    await mirror.reload()
    assert [e.source for e in mirror.entries] == ["alpine:3.20", "ghcr.io/org/app:v1",
                                                  "busybox:1.36"]  # fmt: skip


async def test_each_registry_spends_the_budget_of_the_identity_used_there(  # type: ignore[no-untyped-def]
    built, config: Config
) -> None:
    mirror, index, upstream, budgets, audit, metrics = built
    alpine, app = image("alpine"), image("app")
    serve(upstream, "https://registry-1.docker.io/v2/library/alpine", alpine, "3.20")
    serve(upstream, "https://ghcr.io/v2/org/app", app, "v1")
    for host in ("registry-1.docker.io", "ghcr.io"):
        budgets.seen(host, "regcache", {"ratelimit-remaining": "2"})  # regcache's: spent
    await mirror.reload()
    by_source = {e.source: e for e in mirror.entries}
    hub = await mirror.run_entry(by_source["alpine:3.20"], move=True)
    assert hub["tags"][0]["moved"] is True  # anonymous there: its budget is not the one spent
    ghcr = await mirror.run_entry(by_source["ghcr.io/org/app:v1"], move=True)
    assert ghcr["waiting"] is not None and "for regcache at ghcr.io" in ghcr["waiting"]
    assert [a["repository"] for a in audit] == ["library/alpine"]  # moves go to the audit
    tags = await index.mirrored_tags()
    assert [(t.place.registry, t.access) for t in tags] == [("docker.io", "network")]
    exposed = generate_latest(metrics.registry).decode()
    assert 'regcache_mirror_tags{entry="alpine:3.20"} 1.0' in exposed
    assert 'regcache_mirror_waiting{entry="ghcr.io/org/app:v1"} 1.0' in exposed
    journal = json.loads((config.state_dir / "mirror.json").read_text())  # beside the index
    assert [row[2] for row in journal["tables"]["mirror_tags"]] == ["3.20"]
