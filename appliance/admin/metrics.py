"""Prometheus metrics (prometheus-client), in a registry of regcache's own.

Parts report through the small hooks they already have (the proxy counts requests and
bytes, the upstream client its replies); figures that are state, not events (store size,
free space), are read when scraped. `Savings` keeps what the status page shows and
Prometheus labels should not carry: bytes saved over time, bytes per repository.
"""

from __future__ import annotations

import os
import time
from collections import Counter as Tally
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from yarl import URL

from appliance.local.ports import LocalUsage
from appliance.mirror.records import BudgetSeen
from appliance.mirror.scheduler import Figures
from appliance.oci.headers import ratelimit as parse_ratelimit

_HISTORY_POINTS = 24 * 60  # a day of one-minute samples
_TOP_KEYS = 10_000


class Savings:
    """Bytes served from the store over time, and bytes per repository (in memory: they
    start again at a restart)."""

    def __init__(self) -> None:
        self.saved = 0
        self.fetched = 0
        self.history: deque[tuple[float, int]] = deque([(time.time(), 0)], maxlen=_HISTORY_POINTS)
        self.repositories: Tally[str] = Tally()

    def served(self, registry: str, repository: str, sent: int, from_store: bool) -> None:
        if from_store:
            self.saved += sent
        else:
            self.fetched += sent
        self.repositories[f"{registry}/{repository}"] += sent
        if len(self.repositories) > _TOP_KEYS:  # bounded: keep the busier half
            self.repositories = Tally(dict(self.repositories.most_common(_TOP_KEYS // 2)))

    def sample(self) -> None:
        """Called once a minute."""
        self.history.append((time.time(), self.saved))


class Metrics:
    def __init__(self, host_label: Callable[[str], str] = lambda host: host) -> None:
        """`host_label`: the bounded label for an upstream host (the configured name or
        pattern it matches, else "other"): label values are never chosen by a client."""
        self._host_label = host_label
        self.savings = Savings()
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "regcache_requests", "Client requests answered, by registry host, route, method "
            "and status.", ["registry", "route", "method", "status"], registry=r,
        )  # fmt: skip
        self.answers = Counter(
            "regcache_cache_answers", "Manifest and blob answers by outcome: hit (from the "
            "store), miss (fetched), stale (served while upstream was down), relayed "
            "(upstream's own answer, e.g. 401 or 404), redirected (to the shared bucket).",
            ["registry", "kind", "outcome"], registry=r,
        )  # fmt: skip
        self.served = Counter(
            "regcache_served_bytes", "Body bytes sent to clients, from the store or as "
            "fetched from upstream; source=store is what upstream did not have to send.",
            ["registry", "source"], registry=r,
        )  # fmt: skip
        self.upstream = Counter(
            "regcache_upstream_requests", "Requests regcache sent upstream, by host, method "
            "and status.", ["host", "method", "status"], registry=r,
        )  # fmt: skip
        self.ratelimit = Gauge(
            "regcache_upstream_ratelimit_remaining", "Last `ratelimit-remaining` an upstream "
            "announced, by host and whose credentials: regcache (configured), anonymous, or "
            "clients (their own, all together: the last any of them was told).",
            ["host", "credential"], registry=r,
        )  # fmt: skip
        self.dns = Counter(
            "regcache_dns_queries", "DNS queries by type and outcome: intercepted, "
            "forwarded, cached (a forwarded answer reused), fail-open (a registry name "
            "sent to the real registry while the "
            "proxy is unhealthy), refused, invalid; servfail counts forwards that failed "
            "(also counted as forwarded) and forwards shed under load.",
            ["qtype", "outcome"], registry=r,
        )  # fmt: skip
        self.fill_seconds = Histogram(
            "regcache_fill_duration_seconds", "Upstream blob transfers into the store, from "
            "the upstream answer to the last byte, by how they ended (done, failed, passed: "
            "streamed through on a full disk).", ["state"], registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900),
        )  # fmt: skip
        self.first_byte_seconds = Histogram(
            "regcache_time_to_first_byte_seconds", "From a manifest or blob request to its "
            "status line, by outcome (hit, miss, stale, relayed, redirected).", ["outcome"],
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )  # fmt: skip
        self.evicted_rows = Counter(
            "regcache_evicted_rows", "Blobs and manifests evicted.", registry=r
        )
        self.evicted_bytes = Counter("regcache_evicted_bytes", "Bytes evicted.", registry=r)

    def watch(self, stored: Callable[[], int], root: Path, coalesced: Callable[[], int]) -> None:
        """Store size (the evictor's running figure), free space and coalesced requests,
        read when scraped."""
        self.registry.register(_StateCollector(stored, root, coalesced))

    def watch_mirror(
        self, figures: Callable[[], Sequence[Figures]], budgets: Callable[[], Sequence[BudgetSeen]]
    ) -> None:
        self.registry.register(MirrorCollector(figures, budgets, self._host_label))

    def watch_local(self, usage: Callable[[], LocalUsage], uploads: Callable[[], int]) -> None:
        """The local registry's holdings (as of its last change) and open uploads."""
        self.registry.register(_LocalCollector(usage, uploads))

    def watch_tier(
        self, counts: Callable[[], Mapping[str, int]], failures: Callable[[], Mapping[str, int]]
    ) -> None:
        """What the shared tier (`store.s3`) did since start: `regcache_shared_<name>`."""
        self.registry.register(_TierCollector(counts, failures))

    def watch_peers(self, peers: Callable[[], Sequence[tuple[str, bool, int, int]]]) -> None:
        """The site's other gateways: (name, up, relays, relays failed) of each."""
        self.registry.register(_PeerCollector(peers))

    def body_sent(self, registry: str, repository: str, sent: int, *, from_store: bool) -> None:
        self.served.labels(registry, "store" if from_store else "upstream").inc(sent)
        self.savings.served(registry, repository, sent, from_store)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def upstream_reply(
        self, method: str, url: str, status: int, whose: str, got: Mapping[str, str]
    ) -> None:
        host = self._host_label(URL(url).host or "")
        self.upstream.labels(host, method_label(method), str(status)).inc()
        remaining = parse_ratelimit(got.get("ratelimit-remaining"))
        if remaining is not None:
            self.ratelimit.labels(host, whose).set(remaining[0])


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def method_label(method: str) -> str:
    """A method as a label value: any other token a client sends counts as OTHER."""
    return method if method in _METHODS else "OTHER"


class _StateCollector(Collector):
    def __init__(self, stored: Callable[[], int], root: Path, coalesced: Callable[[], int]) -> None:
        self._stored = stored
        self._root = root
        self._coalesced = coalesced

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        yield CounterMetricFamily(
            "regcache_coalesced_requests",
            "Blob requests that joined a transfer another request started (no fetch).",
            self._coalesced(),
        )
        yield GaugeMetricFamily(
            "regcache_store_bytes", "Bytes of blobs and manifests in the store.", self._stored()
        )
        try:
            stat = os.statvfs(self._root)
        except OSError:
            return
        yield GaugeMetricFamily(
            "regcache_store_free_bytes",
            "Free bytes on the store's filesystem.",
            stat.f_bavail * stat.f_frsize,
        )


class MirrorCollector(Collector):
    """The managed mirror's figures per entry, and the rate-limit budgets seen, read when
    scraped. Entry labels are configured sources (or ones an operator added)."""

    def __init__(
        self,
        figures: Callable[[], Sequence[Figures]],
        budgets: Callable[[], Sequence[BudgetSeen]],
        host_label: Callable[[str], str],
    ) -> None:
        self._figures = figures
        self._budgets = budgets
        self._host_label = host_label

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        figures = self._figures()
        gauges = {
            "tags": ("regcache_mirror_tags", "Tags the entry mirrors (backup refs not counted)."),
            "drift": ("regcache_mirror_drift", "Mirrored tags whose upstream names another "
                      "digest than the one served (the next sync moves them, unless pinned)."),
            "gone": ("regcache_mirror_gone", "Mirrored tags upstream deleted (still served)."),
        }  # fmt: skip
        for field, (name, text) in gauges.items():
            family = GaugeMetricFamily(name, text, labels=["entry"])
            for f in figures:
                family.add_metric([f.entry], getattr(f, field))
            yield family
        times = GaugeMetricFamily(
            "regcache_mirror_last_success_timestamp_seconds",
            "When the entry's last run ended with every tag as it should be.",
            labels=["entry"],
        )
        took = GaugeMetricFamily(
            "regcache_mirror_sync_duration_seconds", "How long the entry's last run took.",
            labels=["entry"],
        )  # fmt: skip
        waiting = GaugeMetricFamily(
            "regcache_mirror_waiting", "1 while the entry waits for rate-limit budget or to "
            "retry a failed run.", labels=["entry"],
        )  # fmt: skip
        fetched = CounterMetricFamily(
            "regcache_mirror_fetched_bytes", "Bytes the entry's runs fetched upstream.",
            labels=["entry"],
        )  # fmt: skip
        for f in figures:
            if f.last_success_s is not None:
                times.add_metric([f.entry], f.last_success_s)
            if f.duration_s is not None:
                took.add_metric([f.entry], f.duration_s)
            waiting.add_metric([f.entry], float(f.state in ("waiting", "failed")))
            fetched.add_metric([f.entry], f.fetched_bytes)
        yield from (times, took, waiting, fetched)
        yield from self._budget_families()

    def _budget_families(self) -> Iterator[GaugeMetricFamily]:
        left = GaugeMetricFamily(
            "regcache_mirror_ratelimit_remaining", "Rate-limit budget left as upstream last "
            "stated it, by host and egress credential (what a sync may spend down to min).",
            labels=["host", "credential"],
        )  # fmt: skip
        ends = GaugeMetricFamily(
            "regcache_mirror_ratelimit_window_end_timestamp_seconds",
            "When that budget's window ends (it refills by then at the latest).",
            labels=["host", "credential"],
        )
        for b in self._budgets():
            labels = [self._host_label(b.registry), b.credential]
            left.add_metric(labels, b.remaining)
            if b.window_s is not None:
                ends.add_metric(labels, b.seen_s + b.window_s)
        yield from (left, ends)


class _LocalCollector(Collector):
    def __init__(self, usage: Callable[[], LocalUsage], uploads: Callable[[], int]) -> None:
        self._usage = usage
        self._uploads = uploads

    def collect(self) -> Iterator[GaugeMetricFamily]:
        usage = self._usage()
        for field, text in (
            ("repositories", "Repositories of the local registry."),
            ("manifests", "Manifests pushed to the local registry (per repository)."),
            ("tags", "Tags of the local registry."),
            ("bytes", "Bytes the local registry holds (never evicted), each digest once."),
        ):
            yield GaugeMetricFamily(f"regcache_local_{field}", text, getattr(usage, field))
        yield GaugeMetricFamily(
            "regcache_local_uploads", "Uploads to the local registry in progress.", self._uploads()
        )


_TIER_HELP = {
    "reads": "Blobs read from the shared tier instead of upstream.",
    "read_bytes": "Bytes read from the shared tier.",
    "uploads": "Blobs this gateway filled and shared.",
    "upload_bytes": "Bytes this gateway uploaded to the shared tier.",
    "already_there": "Uploads dropped: another gateway's object came first.",
    "waits": "Fills left to another gateway that held the blob's lease.",
    "takeovers": "Leases taken over from a gateway that stopped renewing.",
    "distrusted": "Objects removed from the shared tier: they did not match their digest.",
    "redirects": "Clients sent to the shared tier's bucket for a blob (store.s3.redirect).",
    "manifest_reads": "Manifests read from the shared tier instead of upstream.",
    "manifest_uploads": "Manifests this gateway shared.",
}


class _TierCollector(Collector):
    def __init__(
        self, counts: Callable[[], Mapping[str, int]], failures: Callable[[], Mapping[str, int]]
    ) -> None:
        self._counts = counts
        self._failures = failures

    def collect(self) -> Iterator[CounterMetricFamily]:
        counts = self._counts()
        for name, text in _TIER_HELP.items():
            yield CounterMetricFamily(f"regcache_shared_{name}", text, counts.get(name, 0))
        failed = CounterMetricFamily(
            "regcache_shared_failures", "Requests to the shared tier that failed.", labels=["doing"]
        )
        for doing, count in sorted(self._failures().items()):
            failed.add_metric([doing], count)
        yield failed


class _PeerCollector(Collector):
    def __init__(self, peers: Callable[[], Sequence[tuple[str, bool, int, int]]]) -> None:
        self._peers = peers

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        up = GaugeMetricFamily("regcache_peer_up", "1 if the peer gateway is up.", labels=["peer"])
        relays = CounterMetricFamily(
            "regcache_peer_relays", "Blob requests relayed to the peer that owns the blob.",
            labels=["peer"],
        )  # fmt: skip
        failed = CounterMetricFamily(
            "regcache_peer_relays_failed", "Relays the peer could not take (then this gateway"
            " filled).", labels=["peer"],
        )  # fmt: skip
        for name, is_up, relayed, failures in self._peers():
            up.add_metric([name], 1 if is_up else 0)
            relays.add_metric([name], relayed)
            failed.add_metric([name], failures)
        yield from (up, relays, failed)
