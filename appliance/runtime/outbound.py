"""How regcache reaches real registries, built from the config: its own resolver, where
redirects and token realms may lead, and the upstream client."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from appliance.config.model import Config, StartupError
from appliance.config.registries import Registries
from appliance.dns.client import ResolverError, UpstreamResolver, nameservers_from
from appliance.upstream.client import UpstreamClient
from appliance.upstream.credentials import CredentialSource
from appliance.upstream.targets import TargetPolicy

log = logging.getLogger(__name__)

OnReply = Callable[[str, str, int, str, Mapping[str, str]], None]


def upstream_resolver(config: Config) -> UpstreamResolver:
    """`dns.upstreams`, else resolv.conf's nameservers other than regcache itself."""
    servers = list(config.dns.upstreams)
    if not servers:
        try:
            servers = nameservers_from(config.dns.resolv_conf, exclude=config.listen.dns)
        except ResolverError as e:
            log.warning("dns no-upstreams error=%s", e)
        if not servers:
            log.warning(
                "dns no-upstreams source=%s effect=non-registry-names-get-SERVFAIL",
                config.dns.resolv_conf,
            )
    return UpstreamResolver(servers, config.dns.upstream_timeout_s, config.resolve)


def target_policy(config: Config, registries: Registries) -> TargetPolicy:
    """Where redirects and token realms may lead (see `allow_unsafe_targets`)."""
    return TargetPolicy(registries.unsafe_targets, frozenset(config.resolve))


def credential_sources(
    registries: Registries, *, own: bool = False
) -> Callable[[str], CredentialSource | None]:
    """API host → regcache's own credentials, if configured: those lent to clients'
    reads, or (`own`: the managed mirror's client) every one. One source per configured
    login (a source keeps what its helper printed until it expires)."""
    sources = {c: CredentialSource(c) for c in registries.credentials_configured}

    def lookup(host: str) -> CredentialSource | None:
        credentials = registries.credentials(host, own=own)
        return None if credentials is None else sources[credentials]

    return lookup


def upstream_client(
    config: Config,
    registries: Registries,
    resolver: UpstreamResolver,
    *,
    offline: Callable[[], bool] = lambda: False,
    credentials: Callable[[str], CredentialSource | None] | None = None,
    on_reply: OnReply = lambda *_: None,
) -> UpstreamClient:
    """The client (it opens an aiohttp session: close it); a `upstream.ca_bundle` that
    cannot be loaded is a StartupError naming it."""
    try:
        return UpstreamClient(
            resolver.resolve,
            config.upstream.ca_bundle,
            config.upstream.connect_timeout_s,
            config.upstream.read_timeout_s,
            offline=offline,
            credentials=credentials,
            on_reply=on_reply,
            targets=target_policy(config, registries),
        )
    except OSError as e:  # ssl.SSLError is one; the session is created only after loading
        raise StartupError(
            f"upstream.ca_bundle {config.upstream.ca_bundle}: cannot load: {e}"
        ) from e
