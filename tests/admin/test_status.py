"""The admin listener's figures summarised, from a real `/metrics` text and from a real
admin app on loopback."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from appliance.admin.app import create_admin_app
from appliance.admin.metrics import Metrics
from appliance.admin.status import fetch, parse

HUB = "https://registry-1.docker.io/v2/library/alpine/manifests/latest"


def scraped(tmp_path: Path) -> Metrics:
    metrics = Metrics()
    metrics.answers.labels("docker.io", "blob", "hit").inc(3)
    metrics.answers.labels("docker.io", "manifest", "miss").inc(1)
    metrics.answers.labels("docker.io", "manifest", "stale").inc(1)
    metrics.answers.labels("docker.io", "manifest", "relayed").inc(5)  # upstream's answer
    metrics.body_sent("docker.io", "library/alpine", 1000, from_store=True)
    metrics.body_sent("docker.io", "library/alpine", 300, from_store=False)
    for status in (503, 429, 404, 200):
        metrics.upstream_reply("GET", HUB, status, "clients", {"ratelimit-remaining": "7"})
    metrics.watch(lambda: 4096, tmp_path, lambda: 2)
    return metrics


def test_the_summary_counts_hits_bytes_upstream_trouble_and_the_store(tmp_path: Path) -> None:
    status = parse(scraped(tmp_path).render().decode(), True, [])
    hub = status.registries["docker.io"]
    assert (hub.hits, hub.misses, hub.stale) == (3, 1, 1)
    assert hub.hit_ratio == pytest.approx(0.8)  # stale answers spared upstream too
    assert (hub.from_store, hub.fetched) == (1000, 300)
    upstream = status.registries["registry-1.docker.io"]
    assert upstream.upstream_errors == 2  # 503 and 429; a 404 is an answer
    assert upstream.ratelimit == {"clients": 7} and upstream.hit_ratio is None
    assert status.store_bytes == 4096 and status.free_bytes > 0
    assert status.ready and status.problems == []


async def test_fetch_reads_readiness_and_metrics_from_the_admin_listener(tmp_path: Path) -> None:
    async def not_ready() -> Sequence[str]:
        return ["store: cannot write"]

    loopback = [ipaddress.ip_network("127.0.0.0/8")]
    app = create_admin_app(scraped(tmp_path), not_ready, loopback, token="s3cret")
    async with TestServer(app, host="127.0.0.1") as server:
        base = str(server.make_url("")).rstrip("/")
        status = await asyncio.to_thread(fetch, base, "s3cret")
        assert not status.ready and status.problems == ["store: cannot write"]
        assert status.registries["docker.io"].hits == 3
        with pytest.raises(OSError, match="/metrics answered 401"):
            await asyncio.to_thread(fetch, base, "wrong")
