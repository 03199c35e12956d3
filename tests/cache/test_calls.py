"""Upstream asked as the client: remembered 404s per credential."""

from __future__ import annotations

from pathlib import Path

from appliance.cache.access import AccessGate
from appliance.cache.answers import Refused, Target
from appliance.cache.service import RegistryCache
from appliance.store.files import FileBlobStore
from appliance.store.index import SqliteIndex
from tests.cache.alpine import ORIGIN, target
from tests.cache.fakes import FakeUpstream


async def test_manifest_404s_are_replayed_briefly_per_credential(tmp_path: Path) -> None:
    from appliance.cache.negative import NegativeCache

    files = FileBlobStore(tmp_path)
    files.prepare()
    index = await SqliteIndex.open(tmp_path / "index.sqlite")
    upstream = FakeUpstream()
    now = [0.0]
    cache = RegistryCache(
        files,
        index,
        upstream,
        AccessGate(upstream),
        NegativeCache(30, clock=lambda: now[0]),  # type: ignore[arg-type]
    )
    sig = "sha256-" + "a" * 64 + ".sig"
    for _ in range(3):
        answer = await cache.manifest(target(), sig, head=False)
        assert answer == Refused(404)
    assert len(upstream.calls) == 2  # one HEAD and one GET, then replays
    other = Target(ORIGIN, "library/alpine", {"Authorization": "Bearer other"}, frozenset())
    await cache.manifest(other, sig, head=False)
    assert len(upstream.calls) == 4  # another credential asks for itself
    now[0] += 31
    await cache.manifest(target(), sig, head=False)
    assert len(upstream.calls) == 6
    await index.close()
