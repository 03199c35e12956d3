"""The `index` fixture: an empty real SQLite index in a temp folder; `rig`: the mirror
over a real store and cache with upstream scripted (`tests/mirror/rig.py`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from appliance.store.index import SqliteIndex
from appliance.store.reconcile import INDEX_NAME
from tests.mirror.rig import Rig, open_rig


@pytest.fixture
async def index(tmp_path: Path) -> AsyncIterator[SqliteIndex]:
    opened = await SqliteIndex.open(tmp_path / INDEX_NAME)
    yield opened
    await opened.close()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    opened = await open_rig(tmp_path)
    yield opened
    await opened.index.close()
