"""The mirror over real parts: a real store (files and SQLite index), the real cache and
access gate reading the mirror's real view, the real budgets and copier; upstream is the
scripted fake of the cache tests, reached by the mirror through `Credentialed` (the
mirror's own client, holding regcache's credentials when a registry has them)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from appliance.cache.access import AccessGate
from appliance.cache.service import RegistryCache
from appliance.config.model import parse_config
from appliance.config.registries import Registries
from appliance.mirror.budget import Budgets
from appliance.mirror.copier import Copier
from appliance.mirror.entries import Entry, resolve
from appliance.mirror.scheduler import Mirror
from appliance.mirror.view import MirrorTags
from appliance.oci.digest import Digest
from appliance.store.files import FileBlobStore
from appliance.store.index import SqliteIndex
from appliance.store.reconcile import INDEX_NAME
from tests.cache.fakes import FakeReply, FakeUpstream
from tests.mirror.images import Image, serve

HUB = "https://registry-1.docker.io"
ALPINE = f"{HUB}/v2/library/alpine"
GHCR_APP = "https://ghcr.io/v2/org/app"
CONFIG = """\
appliance: {ipv4: 192.0.2.10}
registries:
  - name: docker.io
    hosts: [registry-1.docker.io, index.docker.io]
  - name: ghcr.io
    hosts: [ghcr.io]
mirror:
  defaults:
    interval: 1h
    ratelimit: {min: 10, retry: 5m}
  entries:
    - source: alpine:3.20
    - source: ghcr.io/org/app
"""


def registries(tmp_path: Path) -> Registries:
    return Registries.of(parse_config(CONFIG, tmp_path / "config.yaml"))


def entries(tmp_path: Path) -> list[Entry]:
    config = parse_config(CONFIG, tmp_path / "config.yaml")
    return resolve(config.mirror, Registries.of(config))


@dataclass
class Credentialed:
    """The mirror's own upstream client: regcache's configured credentials (`own`) on
    every request but the anonymous ones; every request reaches the one fake upstream."""

    upstream: FakeUpstream
    own: str | None = None

    async def fetch(self, method: str, url: str, headers: Mapping[str, str]) -> FakeReply:
        if self.own is not None and "Authorization" not in headers:
            headers = {**headers, "Authorization": self.own}
        return await self.upstream.fetch(method, url, headers)

    async def fetch_anonymous(self, method: str, url: str, accept: str | None = None) -> FakeReply:
        return await self.upstream.fetch(method, url, {})


@dataclass
class Rig:
    root: Path
    files: FileBlobStore
    index: SqliteIndex
    upstream: FakeUpstream
    mirror_upstream: Credentialed
    view: MirrorTags
    cache: RegistryCache
    budgets: Budgets
    copier: Copier
    entries: list[Entry]
    now: list[float] = field(default_factory=lambda: [1_000_000.0])

    def entry(self, of: str = "alpine:3.20", **changes: object) -> Entry:
        """The configured entry `of`, with `changes`."""
        found = next(e for e in self.entries if e.source == of)
        return dataclasses.replace(found, **changes)  # type: ignore[arg-type]

    async def reload_view(self) -> None:
        """The view loaded from the index as the running mirror loads it."""

        async def configured() -> list[Entry]:
            return self.entries

        await Mirror(configured, self.index, self.copier, self.view, self.budgets).reload()

    async def mirror(self, served: Image, **entry: object) -> None:
        """`served` upstream as the entry's tag, copied by the mirror and served."""
        chosen = self.entry(**entry)
        tag = chosen.tag or "latest"
        serve(self.upstream, chosen.url, served, tag)
        result = await self.copier.sync(chosen, tag, {t.place: t for t in
                                                      await self.index.mirrored_tags()},
                                        move=True)  # fmt: skip
        assert result.moved, result
        await self.reload_view()

    def on_disk(self, digest: Digest) -> bytes | None:
        path = self.files.path_for(digest)
        return path.read_bytes() if path.is_file() else None

    def gets(self, kind: str = "") -> list[str]:
        """URLs of the GETs upstream answered (of manifests or blobs only, if `kind`)."""
        return [u for m, u, _ in self.upstream.calls if m == "GET" and f"/{kind}/" in u]


async def open_rig(root: Path) -> Rig:
    files = FileBlobStore(root)
    files.prepare()
    index = await SqliteIndex.open(root / INDEX_NAME)
    upstream = FakeUpstream()
    mirror_upstream = Credentialed(upstream)
    view = MirrorTags(registries(root).place)
    now = [1_000_000.0]
    gate = AccessGate(upstream, index, files, mirror=view, clock=lambda: now[0],  # type: ignore[arg-type]
                      wall_clock=lambda: now[0])  # fmt: skip
    cache = RegistryCache(files, index, upstream, gate, mirror=view)  # type: ignore[arg-type]
    budgets = Budgets(clock=lambda: now[0])

    def whose(_host: str) -> str:
        return "anonymous" if mirror_upstream.own is None else "regcache"

    copier = Copier(mirror_upstream, cache, index, budgets, whose, clock=lambda: now[0])  # type: ignore[arg-type]
    return Rig(root, files, index, upstream, mirror_upstream, view, cache, budgets, copier,
               entries(root), now)  # fmt: skip
