"""What the config says about a request's Host: how the proxy treats that registry."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from appliance.config.push import PushRule


@dataclass(frozen=True, slots=True)
class Site:
    """What the config says about a request's Host: its tag TTL and role."""

    tag_ttl_s: float
    max_stale_s: float
    api: bool
    """False for token-realm hosts, whose traffic always passes through."""
    own_credentials: bool = False
    """regcache has credentials for this registry: clients are told no login is needed."""
    label: str = ""
    """The configured host or `*.` pattern the Host matched: metrics and statistics use it
    (a wildcard admits unboundedly many names)."""
    registry: str = ""
    """The configured registry's name (its API hosts and token realm hosts share it)."""
    aliases: tuple[str, ...] = ()
    """Every configured host name of this Host's registry (`registry-1.docker.io`,
    `index.docker.io`) when the Host is one of them: a write through one changes what
    the others answer. Empty for a name under a wildcard: each is a registry of its own."""
    push: tuple[PushRule, ...] = ()
    """Who may push through regcache, per repository (`registries[].push`)."""
    local: bool = False
    """A name of the local registry (`local.hosts`): regcache answers it all itself."""
    mirror: bool = False
    """A name regcache answers as an explicit mirror (`mirror_mode.names`): its requests
    are routed to the registry they name (proxy/mirrorfront.py)."""


def request_host(request: web.Request) -> str:
    """The host a request names (its `Host`, without port or trailing dot), lower case."""
    return (request.url.host or "").lower().rstrip(".")
