"""Fixtures more than one test folder uses."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.s3engine import moto_server


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 endpoint (moto's server) on loopback, one for the whole run: tests take
    a bucket of their own (`make_bucket`)."""
    with moto_server() as endpoint:
        yield endpoint
