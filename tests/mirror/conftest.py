"""The `index` fixture: an empty real SQLite index in a temp folder."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from appliance.store.index import SqliteIndex
from appliance.store.reconcile import INDEX_NAME


@pytest.fixture
async def index(tmp_path: Path) -> AsyncIterator[SqliteIndex]:
    opened = await SqliteIndex.open(tmp_path / INDEX_NAME)
    yield opened
    await opened.close()
