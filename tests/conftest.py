"""Fixtures more than one test folder uses."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.s3engine import s3_server


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real S3 endpoint on loopback, one for the whole run: moto's server, or SeaweedFS
    when REGCACHE_S3_ENGINE=seaweedfs (its log in the run's temp folder). Tests take a
    bucket of their own (`make_bucket`)."""
    with s3_server("127.0.0.1", tmp_path_factory.mktemp("s3")) as endpoint:
        yield endpoint
