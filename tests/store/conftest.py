"""The `store` fixture: an empty real store in a temp folder; `bucket_config`: a new
bucket on a real S3 endpoint."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from appliance.config.shared import S3Config, S3Credentials
from appliance.config.values import SecretRef
from appliance.store.files import FileBlobStore
from appliance.store.index import SqliteIndex
from appliance.store.reconcile import INDEX_NAME
from tests.s3engine import KEY_ID, SECRET, make_bucket
from tests.store.stock import Store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    files = FileBlobStore(tmp_path)
    files.prepare()
    index = await SqliteIndex.open(tmp_path / INDEX_NAME)
    yield Store(tmp_path, files, index)
    await index.close()


@pytest.fixture
def bucket_config(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> S3Config:
    """A new bucket on the run's S3 endpoint (`s3_endpoint`), its keys in T_KEY_ID and
    T_SECRET."""
    monkeypatch.setenv("T_KEY_ID", KEY_ID)
    monkeypatch.setenv("T_SECRET", SECRET)
    return S3Config(
        endpoint=s3_endpoint, bucket=make_bucket(s3_endpoint), force_path_style=True,
        credentials=S3Credentials(SecretRef(env="T_KEY_ID"), SecretRef(env="T_SECRET")),
    )  # fmt: skip
