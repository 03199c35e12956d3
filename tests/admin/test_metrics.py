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


def test_mirror_figures_and_budgets_are_scraped_per_entry_and_host() -> None:
    from appliance.mirror.records import BudgetSeen
    from appliance.mirror.scheduler import Figures

    metrics = Metrics(lambda host: "registry-1.docker.io" if "docker" in host else "other")
    entry = Figures("docker.io/library/alpine:3.20", 2, 1, 0, "waiting", 100.0, 200.0, 3.5,
                    4096, "budget")  # fmt: skip
    budget = BudgetSeen("registry-1.docker.io", "regcache", 12, 100, 600, 1000.0)
    metrics.watch_mirror(lambda: [entry], lambda: [budget])
    text = metrics.render().decode()
    label = 'entry="docker.io/library/alpine:3.20"'
    assert f"regcache_mirror_tags{{{label}}} 2.0" in text
    assert f"regcache_mirror_drift{{{label}}} 1.0" in text
    assert f"regcache_mirror_waiting{{{label}}} 1.0" in text
    assert f"regcache_mirror_last_success_timestamp_seconds{{{label}}} 100.0" in text
    assert f"regcache_mirror_fetched_bytes_total{{{label}}} 4096.0" in text
    host = 'credential="regcache",host="registry-1.docker.io"'
    assert f"regcache_mirror_ratelimit_remaining{{{host}}} 12.0" in text
    assert f"regcache_mirror_ratelimit_window_end_timestamp_seconds{{{host}}} 1600.0" in text
