"""The `store` fixture: an empty real store in a temp folder."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from appliance.store.files import FileBlobStore
from appliance.store.index import SqliteIndex
from appliance.store.reconcile import INDEX_NAME
from tests.store.stock import Store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    files = FileBlobStore(tmp_path)
    files.prepare()
    index = await SqliteIndex.open(tmp_path / INDEX_NAME)
    yield Store(tmp_path, files, index)
    await index.close()
