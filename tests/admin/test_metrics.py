"""Prometheus metrics: bounded labels for upstream hosts, methods and rate limits."""

from __future__ import annotations

import re
from pathlib import Path

from appliance.admin.metrics import Metrics


def test_rate_limit_headers_become_a_gauge_per_host_and_whose_credentials() -> None:
    metrics = Metrics()
    url = "https://registry-1.docker.io/v2/library/alpine/manifests/latest"
    got = {"ratelimit-limit": "100;w=21600", "ratelimit-remaining": "97;w=21600"}
    for _ in range(3):  # many clients' tokens: one series, the last any of them was told
        metrics.upstream_reply("HEAD", url, 200, "clients", got)
    metrics.upstream_reply("HEAD", url, 200, "anonymous", {"ratelimit-remaining": "42"})
    text = metrics.render().decode()
    host = 'host="registry-1.docker.io"'
    assert f'regcache_upstream_ratelimit_remaining{{credential="anonymous",{host}}} 42.0' in text
    assert f'regcache_upstream_ratelimit_remaining{{credential="clients",{host}}} 97.0' in text
    assert text.count("regcache_upstream_ratelimit_remaining{") == 2
    assert f'regcache_upstream_requests_total{{{host},method="HEAD",status="200"}} 4.0' in text


def test_upstream_hosts_are_labelled_by_the_configured_name_they_match(tmp_path: Path) -> None:
    from appliance.config.model import parse_config
    from appliance.config.registries import Registries

    config = parse_config(
        "appliance: {ipv4: 192.0.2.1}\nregistries:\n  - name: docker.io\n"
        "    hosts: [registry-1.docker.io]\n    redirect_hosts: ['*.r2.cloudflarestorage.com']\n",
        tmp_path / "c.yaml",
    )
    metrics = Metrics(Registries.of(config).label)
    r2 = ("a1.r2.cloudflarestorage.com", "b2.r2.cloudflarestorage.com")
    for host in ("registry-1.docker.io", *r2, "evil.example", "other.example"):
        metrics.upstream_reply("GET", f"https://{host}/x", 200, "anonymous", {})
    metrics.upstream_reply("BREW", "https://registry-1.docker.io/x", 405, "anonymous", {})
    text = metrics.render().decode()
    hosts = set(re.findall(r'regcache_upstream_requests_total\{host="([^"]+)"', text))
    assert hosts == {"registry-1.docker.io", "*.r2.cloudflarestorage.com", "other"}
    assert 'method="OTHER"' in text and "BREW" not in text
