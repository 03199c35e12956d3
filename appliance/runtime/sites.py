"""What the proxy knows of a request's Host: its registry's tag policy, role, label and
other names (`proxy.site.Site`), from the config's one `registries` list."""

from __future__ import annotations

import functools
from collections.abc import Callable

from appliance.config.mirrormode import MirrorModeConfig
from appliance.config.registries import Registries
from appliance.proxy.mirrorfront import MirrorFront
from appliance.proxy.site import Site


def site_resolver(registries: Registries) -> Callable[[str], Site | None]:
    """Host → what the proxy needs to know of its registry (cached: asked per request)."""

    @functools.lru_cache(maxsize=4096)
    def site_for(host: str) -> Site | None:
        if registries.mirror_names.match(host):
            return Site(0, 0, api=True, label=host, registry=host, mirror=True)
        if registries.local.match(host):
            label = registries.local.pattern_for(host) or host
            return Site(0, 0, api=True, label=label, registry=label, local=True)
        route = registries.route(host)
        if route is None:
            return None
        named = tuple(str(h) for h in route.registry.hosts if not h.startswith("*"))
        return Site(
            route.registry.tag_ttl_s,
            route.registry.max_stale_s,
            api=route.api,
            own_credentials=route.registry.credentials is not None
            and route.registry.credentials.lend,
            label=route.label,
            registry=route.registry.name,
            aliases=named if host in named else (),
            push=route.registry.push,
        )

    return site_for


def mirror_front(
    mode: MirrorModeConfig, registries: Registries, site_for: Callable[[str], Site | None]
) -> MirrorFront | None:
    """Mirror mode's front of the proxy, when `mirror_mode.names` turns it on."""
    if not mode.names:
        return None
    return MirrorFront(site_for, registries.origin, mode.default_registry)
