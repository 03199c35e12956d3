from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import Regcache, running, write_config


@pytest.fixture(scope="module")
def regcache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Regcache]:
    rc = write_config(tmp_path_factory.mktemp("tls"), dns={"upstreams": ["127.0.0.1:9"]})
    with running(rc):
        yield rc


@pytest.fixture(scope="module")
def ca_pem(regcache: Regcache) -> Path:
    path = regcache.config_path.parent / "ca.pem"
    regcache.cli("ca", "export", "--out", str(path))
    return path
