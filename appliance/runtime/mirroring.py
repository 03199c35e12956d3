"""The managed mirror's parts: its view (built before the cache, which asks it), the
rate-limit budgets every upstream answer feeds, and the mirror itself around the open
index, the cache and an upstream client of its own that holds every configured
credential (those not lent to clients too)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from yarl import URL

from appliance.admin import mirrorpage
from appliance.admin.metrics import Metrics
from appliance.cache.service import RegistryCache
from appliance.config.model import Config
from appliance.config.registries import Registries
from appliance.mirror.budget import Budgets
from appliance.mirror.copier import Copier
from appliance.mirror.entries import Entry, resolve
from appliance.mirror.records import MirrorRecords
from appliance.mirror.scheduler import Mirror
from appliance.mirror.view import MirrorTags
from appliance.runtime.outbound import OnReply
from appliance.store import mirrorjournal
from appliance.store.index import SqliteIndex
from appliance.upstream.client import UpstreamClient


def mirror_view(registries: Registries) -> MirrorTags:
    return MirrorTags(registries.place)


def feeding(budgets: Budgets, on_reply: OnReply) -> OnReply:
    """`on_reply` (metrics), and the budgets told what each answer says of them."""

    def both(method: str, url: str, status: int, whose: str, got: Mapping[str, str]) -> None:
        on_reply(method, url, status, whose, got)
        budgets.seen(URL(url).host or "", whose, got)

    return both


def build_mirror(
    config: Config,
    registries: Registries,
    index: SqliteIndex,
    cache: RegistryCache,
    upstream: UpstreamClient,
    view: MirrorTags,
    budgets: Budgets,
    audit: Callable[[dict[str, Any]], None] | None,
    metrics: Metrics,
    records: MirrorRecords | None = None,
) -> Mirror:
    """The mirror, its figures on `/metrics`; `records`: its rows (default: the index's
    alone; several gateways: shared through the bucket)."""
    rows = records or index

    async def entries() -> list[Entry]:
        return resolve(config.mirror, registries, await index.added_entries())

    def whose(host: str) -> str:
        return "anonymous" if registries.credentials(host, own=True) is None else "regcache"

    copier = Copier(upstream, cache, rows, budgets, whose)
    mirror = Mirror(entries, rows, copier, view, budgets, audit=audit,
                    journal=lambda: mirrorjournal.save(config.state_dir, index))  # fmt: skip
    metrics.watch_mirror(mirror.figures, budgets.all)
    if cache.uploads is not None:  # a tag pushed through regcache: the mirror serves it
        cache.uploads.on_tag_pushed = mirror.pushed
    return mirror


def mirror_section(mirror: Mirror, budgets: Budgets) -> str:
    """The status page's mirror section, as things are now."""
    return mirrorpage.render(mirror.figures(), budgets.all(), list(mirror.moves))
