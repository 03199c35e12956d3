from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dns.fake_upstream import FakeUpstream, FakeUpstreamThread
from tests.harness import Regcache, free_port, running, write_config


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstreamThread(free_port()) as fake:
        yield fake


@pytest.fixture(scope="module")
def regcache(
    upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Regcache]:
    tmp: Path = tmp_path_factory.mktemp("dns")
    rc = write_config(
        tmp,
        appliance={"ipv4": "192.0.2.53", "ipv6": "2001:db8::53"},
        dns={
            "upstreams": [f"127.0.0.1:{upstream.port}"],
            "upstream_timeout_s": 0.5,
            "allow_clients": ["127.0.0.1/32", "::1/128"],
            "rate_limit_qps": 0,
            "tcp_idle_timeout_s": 2,
            "tcp_max_connections": 256,
            "ttl_s": 60,
        },
    )
    with running(rc):
        yield rc
