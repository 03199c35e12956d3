"""The DNS front: the responder over the names every configured registry intercepts,
with its limits, as `regcache serve` wires it."""

from __future__ import annotations

import functools
from collections.abc import Callable

from appliance.admin.metrics import Metrics
from appliance.config.model import Config
from appliance.config.registries import Registries
from appliance.dns.cache import AnswerCache
from appliance.dns.client import UpstreamResolver
from appliance.dns.ratelimit import RateLimiter
from appliance.dns.responder import Interception, Responder
from appliance.dns.server import DnsServer, ServerLimits


def dns_server(
    config: Config,
    registries: Registries,
    resolver: UpstreamResolver,
    metrics: Metrics,
    healthy: Callable[[], bool],
) -> DnsServer:
    """The responder over the intercepted names; fails open for the registries that do
    while `healthy()` says no (the proxy is unhealthy, or the store still reconciling)."""
    interception = Interception(
        registries.intercepted,
        config.appliance.ipv4,
        config.appliance.ipv6,
        config.dns.ttl_s,
        fail_open=registries.fail_open,
        healthy=healthy,
        real_addresses={str(host): addresses for host, addresses in config.resolve.items()},
    )
    responder = Responder(
        interception,
        resolver,
        config.dns.allow_clients,
        config.dns.max_inflight_forwards,
        count=_counting(metrics),
        cache=AnswerCache(config.dns.cache_entries, config.dns.cache_max_ttl_s),
    )
    return DnsServer(
        responder,
        RateLimiter(config.dns.rate_limit_qps, config.dns.rate_limit_burst),
        ServerLimits(
            max_pending_udp=4 * config.dns.max_inflight_forwards,
            max_connections=config.dns.tcp_max_connections,
            idle_timeout_s=config.dns.tcp_idle_timeout_s,
        ),
    )


def _counting(metrics: Metrics) -> Callable[[str, str], None]:
    """Counts a query by (type, outcome); each pair's counter looked up once (prometheus'
    `labels()` costs as much as a cached answer's other work). Both come from bounded
    sets (`_qtype_label`, the outcomes)."""
    children = functools.cache(metrics.dns.labels)
    return lambda qtype, outcome: children(qtype, outcome).inc()
