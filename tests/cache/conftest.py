"""`parts`: a `RegistryCache` over a real store and index, with the upstream port faked;
`rig`: the same with the managed mirror's view, budgets and copier."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from appliance.cache.access import AccessGate
from appliance.cache.service import RegistryCache
from appliance.store.files import FileBlobStore
from appliance.store.index import SqliteIndex
from tests.cache.fakes import FakeUpstream
from tests.mirror.rig import Rig, open_rig


@pytest.fixture
async def parts(tmp_path: Path) -> AsyncIterator[tuple[RegistryCache, FakeUpstream, FileBlobStore]]:
    files = FileBlobStore(tmp_path)
    files.prepare()
    index = await SqliteIndex.open(tmp_path / "index.sqlite")
    upstream = FakeUpstream()
    cache = RegistryCache(files, index, upstream, AccessGate(upstream))  # type: ignore[arg-type]
    yield cache, upstream, files
    await index.close()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    """The cache as regcache builds it with the managed mirror (`tests/mirror/rig.py`)."""
    opened = await open_rig(tmp_path)
    yield opened
    await opened.index.close()
