"""What one cache answer counts for: the bytes sent (statistics and metrics), its
outcome label, and its audit record."""

from __future__ import annotations

import datetime as dt
from functools import partial
from typing import Protocol

from aiohttp import web

from appliance.admin.metrics import Metrics
from appliance.cache.answers import Answer, Redirected, Refused, Relayed, Stored, Target
from appliance.proxy.loops import Bridge
from appliance.proxy.routing import CacheRoute


class Served(Protocol):
    """Where the cache's statistics hear of bytes served (`RegistryCache`)."""

    def count_served(self, host: str, from_store: int, from_upstream: int) -> None: ...


class Tally:
    """The body bytes of one cache answer, counted as they are sent: the cache's
    statistics and the metrics hear of them on the cache's loop."""

    def __init__(
        self, served: Served, metrics: Metrics, bridge: Bridge, label: str, repository: str
    ) -> None:
        self._served = served
        self._metrics = metrics
        self._bridge = bridge
        self._label = label
        self._repository = repository
        self.sent = 0

    def count(self, sent: int, from_store: bool) -> None:
        self.sent += sent
        self._bridge.call(self._served.count_served, self._label, sent if from_store else 0,
                          0 if from_store else sent)  # fmt: skip
        self._bridge.call(partial(self._metrics.body_sent, self._label, self._repository, sent,
                                  from_store=from_store))  # fmt: skip


def outcome(answer: Answer) -> str:
    """hit: the bytes came from the store; miss: from upstream (a fill, a manifest
    fetched and stored, a HEAD described from upstream's); stale: from the store while
    upstream was down; relayed: upstream's own answer (or one made from a fallback tag);
    redirected: sent to the shared bucket."""
    if isinstance(answer, Stored) and not answer.fetched:
        return "stale" if answer.stale else "hit"
    if isinstance(answer, Redirected):
        return "redirected"
    return "relayed" if isinstance(answer, Relayed | Refused) else "miss"


def audit_entry(
    request: web.Request,
    target: Target,
    route: CacheRoute,
    answer: Answer,
    response: web.StreamResponse,
    sent: int,
    ms: float,
) -> dict[str, object]:
    """One audit record: who asked for what, and how it was answered."""
    return {
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        "client": request.remote, "registry": target.host,
        "repository": route.repository, "reference": str(route.reference),
        "digest": None if isinstance(answer, Relayed | Refused) else str(answer.digest),
        "kind": route.kind, "method": request.method, "status": response.status,
        "bytes": sent, "outcome": outcome(answer), "ms": ms,
    }  # fmt: skip
