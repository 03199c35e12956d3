"""The admin listener's figures summarised: `regcache status` and the status page."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from appliance.cache.ports import in_trouble


@dataclass
class RegistryFigures:
    hits: float = 0.0
    misses: float = 0.0
    stale: float = 0.0
    from_store: float = 0.0
    fetched: float = 0.0
    upstream_errors: float = 0.0
    ratelimit: dict[str, float] = field(default_factory=dict)

    @property
    def hit_ratio(self) -> float | None:
        answered = self.hits + self.misses + self.stale
        return None if not answered else (self.hits + self.stale) / answered


@dataclass
class Status:
    ready: bool
    problems: list[str]
    store_bytes: float
    free_bytes: float
    registries: dict[str, RegistryFigures]
    local: dict[str, float] = field(default_factory=dict)
    """The local registry's figures (`repositories`, `tags`, `bytes`, `uploads`…), if one."""


def fetch(base: str, token: str | None, timeout_s: float = 5.0) -> Status:
    """Read `/readyz` and `/metrics` from the admin listener at `base`."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}

    def get(path: str) -> tuple[int, str]:
        request = urllib.request.Request(base + path, headers=headers)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as reply:  # noqa: S310
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    status, body = get("/readyz")
    readiness: dict[str, Any] = (
        json.loads(body) if status in (200, 503) else {"ready": False, "problems": [body]}
    )
    status, text = get("/metrics")
    if status != 200:
        raise OSError(f"{base}/metrics answered {status}: {text[:200]}")
    problems = [str(p) for p in readiness.get("problems", [])]
    return parse(text, bool(readiness.get("ready")), problems)


def parse(text: str, ready: bool, problems: list[str]) -> Status:
    """The summary of a `/metrics` text (also what the status page shows)."""
    figures: dict[str, RegistryFigures] = defaultdict(RegistryFigures)
    store: dict[str, float] = {}
    local: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in ("regcache_store_bytes", "regcache_store_free_bytes"):
                store[sample.name] = sample.value
            elif sample.name.startswith("regcache_local_"):
                local[sample.name.removeprefix("regcache_local_")] = sample.value
            else:
                _add(figures, sample.name, sample.labels, sample.value)
    return Status(
        ready,
        problems,
        store.get("regcache_store_bytes", 0.0),
        store.get("regcache_store_free_bytes", 0.0),
        dict(figures),
        local,
    )


def _add(
    figures: dict[str, RegistryFigures], name: str, labels: dict[str, str], value: float
) -> None:
    """One sample of a per-registry family into that registry's figures."""
    if name == "regcache_cache_answers_total":
        target = figures[labels["registry"]]
        outcome = labels["outcome"]
        if outcome == "hit":
            target.hits += value
        elif outcome == "miss":
            target.misses += value
        elif outcome == "stale":
            target.stale += value
    elif name == "regcache_served_bytes_total":
        target = figures[labels["registry"]]
        if labels["source"] == "store":
            target.from_store += value
        else:
            target.fetched += value
    elif name == "regcache_upstream_requests_total":
        if labels["status"].isdigit() and in_trouble(int(labels["status"])):
            figures[labels["host"]].upstream_errors += value
    elif name == "regcache_upstream_ratelimit_remaining":
        figures[labels["host"]].ratelimit[labels["credential"]] = value
