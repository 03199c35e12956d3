"""The config's one `registries` list as every part asks about it: which names DNS
intercepts and TLS serves, where a host routes, whose credentials and metric label it gets."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from appliance.config.hostnames import Hostname, HostPattern, HostSet, is_within
from appliance.oci.names import DOCKER_HUB_HOSTS

if TYPE_CHECKING:  # config imports this module to validate; types only here
    from appliance.config.model import Config, CredentialsConfig, RegistryConfig

_LABELS = 4096  # cached labels: wildcard patterns admit unboundedly many hosts


@dataclass(frozen=True, slots=True)
class Route:
    """The registry a request's Host belongs to."""

    registry: RegistryConfig
    api: bool
    """An API host; False for a token-realm host, whose traffic always passes through."""
    label: str
    """The configured host or `*.` pattern it matched: bounded, for metrics and statistics."""


@dataclass(frozen=True, slots=True)
class _Entry:
    registry: RegistryConfig
    api: HostSet
    served: HostSet


def _served(registry: RegistryConfig) -> tuple[HostPattern, ...]:
    """Intercepted, given a leaf and routed: API hosts, and token-realm hosts unless
    `intercept_auth_hosts` is off."""
    return registry.hosts + (registry.auth_hosts if registry.intercept_auth_hosts else ())


def _contacted(registry: RegistryConfig) -> tuple[HostPattern, ...]:
    """API, auth and redirect hosts: every host regcache talks to for this registry."""
    return registry.hosts + registry.auth_hosts + registry.redirect_hosts


class Registries:
    """Built once from the config; every host set derived from `registries` lives here,
    so DNS interception, leaf minting and routing cannot drift apart."""

    __slots__ = (
        "_contacted", "_entries", "api_names", "credentials_configured", "fail_open",
        "intercepted", "label", "local", "mirror_names", "permitted_domains", "unsafe_targets",
    )  # fmt: skip

    def __init__(
        self,
        registries: Sequence[RegistryConfig],
        permitted_domains: tuple[Hostname, ...] = (),
        local: Sequence[Hostname] = (),
        mirror_names: Sequence[Hostname] = (),
    ) -> None:
        self._entries = tuple(
            _Entry(r, HostSet.of(r.hosts), HostSet.of(_served(r))) for r in registries
        )
        self.local = HostSet.of(local)
        """The local registry's names (`local.hosts`): served by regcache alone."""
        self.mirror_names = HostSet.of(mirror_names)
        """The names regcache answers as an explicit mirror (`mirror_mode.names`)."""
        self.intercepted = HostSet.of(
            (*(p for r in registries for p in _served(r)), *local, *mirror_names)
        )
        """The names DNS answers with the appliance and TLS mints leaves for: every
        registry's that `route` finds, the local registry's and the mirror's."""
        self.fail_open = HostSet.of(p for r in registries if r.fail_open for p in _served(r))
        """Names DNS answers with their real addresses while the proxy is unhealthy."""
        self.unsafe_targets = HostSet.of(
            p for r in registries if r.allow_unsafe_targets for p in _contacted(r)
        )
        """The target policy's allowed hosts (`allow_unsafe_targets`)."""
        self.permitted_domains = permitted_domains or _own_domains(self.intercepted)
        """The CA's DNS subtrees: as configured, else exactly what is intercepted."""
        self.api_names = tuple(h for r in registries for h in r.hosts if not h.startswith("*"))
        """Exact API host names in config order (what `regcache doctor` checks)."""
        self.credentials_configured = tuple(
            r.credentials for r in registries if r.credentials is not None
        )
        self._contacted = HostSet.of(p for r in registries for p in _contacted(r))
        self.label: Callable[[str], str] = functools.lru_cache(maxsize=_LABELS)(self._label)
        """Upstream host → its metric label: the configured host or pattern it matches
        (API, auth or redirect host), else `other`. Redirects decide hosts: labels must not."""

    @classmethod
    def of(cls, config: Config) -> Registries:
        return cls(
            config.registries, config.tls.permitted_domains, config.local.hosts,
            config.mirror_mode.names,
        )  # fmt: skip

    def contacted(self, host: str) -> bool:
        """Whether regcache talks to `host` for some registry (API, auth or redirect host)."""
        return self._contacted.match(host)

    def hosts_outside(self, permitted: Iterable[str]) -> list[str]:
        """Intercepted patterns a CA constrained to `permitted` cannot sign for."""
        domains = tuple(permitted)
        return [
            p
            for p in self.intercepted.patterns()
            if not any(is_within(p.removeprefix("*."), d) for d in domains)
        ]

    def route(self, host: str) -> Route | None:
        """The registry an intercepted `host` (API or token-realm host) belongs to."""
        for entry in self._entries:
            if entry.served.match(host):
                label = entry.served.pattern_for(host) or host
                return Route(entry.registry, entry.api.match(host), label)
        return None

    def credentials(self, host: str, *, own: bool = False) -> CredentialsConfig | None:
        """regcache's own credentials for an API host of a registry that has them: those
        lent to clients' reads, or (`own`) those for regcache's own requests too."""
        for entry in self._entries:
            creds = entry.registry.credentials
            if creds is not None and (own or creds.lend) and entry.api.match(host):
                return creds
        return None

    def place(self, host: str) -> str | None:
        """Where a repository lives, as the managed mirror keys it: the registry's name
        for one of its configured API hosts (Docker Hub by every name it goes by), the
        host itself for a name under a `*.` pattern (each is a registry of its own);
        None for a host that is no configured API host."""
        origin = self.origin(host)
        route = None if origin is None else self.route(origin)
        if route is None or not route.api:
            return None
        return origin if route.label.startswith("*.") else route.registry.name

    def origin(self, host: str) -> str | None:
        """The API host to ask for images named with `host` (`docker.io` →
        `registry-1.docker.io`), if a configured registry serves it."""
        host = host.lower()
        names = (_HUB_API, *sorted(DOCKER_HUB_HOSTS)) if host in DOCKER_HUB_HOSTS else (host,)
        for name in names:
            route = self.route(name)
            if route is not None and route.api:
                return name
        return None

    def api_hosts(self, name: str) -> HostSet | None:
        """The API hosts of the registry called `name`, if one is."""
        for entry in self._entries:
            if entry.registry.name == name:
                return entry.api
        return None

    def _label(self, host: str) -> str:
        return self._contacted.pattern_for(host) or "other"


_HUB_API = "registry-1.docker.io"


def _own_domains(intercepted: HostSet) -> tuple[Hostname, ...]:
    """Each intercepted host, or the suffix of a `*.` pattern, without names another entry
    covers."""
    domains = {p.removeprefix("*.") for p in intercepted.patterns()}
    return tuple(
        Hostname(d)
        for d in sorted(domains)
        if not any(other != d and is_within(d, other) for other in domains)
    )
