"""The regcache configuration: frozen dataclasses loaded strictly from one YAML file, each
default documented beside its field, each error naming file, line and dotted key."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import NoReturn

from appliance.config import strict_yaml
from appliance.config.hostnames import Hostname, HostPattern, too_broad
from appliance.config.local import LocalConfig, check_local
from appliance.config.mirror import MirrorConfig, check_entries
from appliance.config.mirrormode import MirrorModeConfig, check_mirror_mode
from appliance.config.peers import PeersConfig, check_peers
from appliance.config.push import PushRule
from appliance.config.registries import Registries
from appliance.config.shared import S3Config
from appliance.config.strict_yaml import check
from appliance.config.values import (
    SCALARS,
    between,
    non_empty,
    non_negative,
    one_of,
    one_source,
    positive,
)
from appliance.config.values import Endpoint as Endpoint
from appliance.config.values import IPAddress as IPAddress
from appliance.config.values import IPNetwork as IPNetwork
from appliance.config.values import SecretRef as SecretRef
from appliance.config.values import Size as Size

DEFAULT_PATH = Path("/etc/regcache/config.yaml")

# Loopback and the private ranges: regcache must never be an open resolver.
_PRIVATE_CLIENTS = (
    "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
    "::1/128", "fc00::/7", "fe80::/10",
)  # fmt: skip


class ConfigError(ValueError):
    """An invalid configuration; the message names the file, line and dotted key."""


class StartupError(RuntimeError):
    """regcache cannot start with this config; the message says how to fix it."""


@dataclass(frozen=True, slots=True)
class ListenConfig:
    dns: tuple[Endpoint, ...] = field(
        default=(Endpoint(IPv4Address("0.0.0.0"), 53),),  # noqa: S104 - the gateway serves its LAN
        metadata=check(non_empty),
    )
    """UDP+TCP addresses of the DNS responder; production uses port 53."""
    https: tuple[Endpoint, ...] = field(
        default=(Endpoint(IPv4Address("0.0.0.0"), 443),),  # noqa: S104
        metadata=check(non_empty),
    )
    """Addresses of the TLS-terminating proxy; production uses port 443."""
    https_loops: int = field(default=0, metadata=check(between(0, 64)))
    """Event loops carrying TLS connections, each in its own thread; 0: one per CPU
    (at most 8). Serving stored blobs is mostly GIL-free TLS and I/O, so it scales."""


@dataclass(frozen=True, slots=True)
class ApplianceConfig:
    ipv4: IPv4Address
    """The address intercepted names resolve to (A records): the gateway's address."""
    ipv6: IPv6Address | None = None
    """AAAA answer; when unset AAAA gets an empty NOERROR so clients fall back to IPv4."""

    def addresses(self) -> tuple[IPAddress, ...]:
        return (self.ipv4,) if self.ipv6 is None else (self.ipv4, self.ipv6)


@dataclass(frozen=True, slots=True)
class DnsConfig:
    ttl_s: int = field(default=60, metadata=check(between(1, 86400)))
    """TTL of intercepted answers; short so that turning regcache off takes effect soon."""
    upstreams: tuple[Endpoint, ...] = ()
    """Real resolvers for everything else; empty = the nameservers in `resolv_conf`."""
    resolv_conf: Path = Path("/etc/resolv.conf")
    upstream_timeout_s: float = field(default=2.0, metadata=check(between(0.05, 30)))
    """Per upstream attempt; after all upstreams time out the client gets SERVFAIL."""
    allow_clients: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n) for n in _PRIVATE_CLIENTS)
    """Clients outside these networks get REFUSED (never an open resolver)."""
    rate_limit_qps: float = field(default=500.0, metadata=check(non_negative))
    """Sustained queries per second per client address; 0 disables the limit."""
    rate_limit_burst: int = field(default=1000, metadata=check(positive))
    max_inflight_forwards: int = field(default=512, metadata=check(between(1, 65536)))
    """Forwards waiting on upstream at once; beyond this clients get SERVFAIL at once."""
    tcp_max_connections: int = field(default=256, metadata=check(between(1, 65536)))
    tcp_idle_timeout_s: float = field(default=10.0, metadata=check(between(0.1, 10)))
    cache_entries: int = field(default=4096, metadata=check(between(0, 1_000_000)))
    """Forwarded answers kept for reuse while their TTLs allow (negative ones per RFC
    2308); 0 = none. Emptied by a config reload (SIGHUP)."""
    cache_max_ttl_s: int = field(default=86400, metadata=check(between(1, 604800)))
    """The longest any forwarded answer is reused, whatever its TTL says."""


@dataclass(frozen=True, slots=True)
class TlsConfig:
    name_constraints: bool = True
    """Critical X.509 Name Constraints on the CA. Turning this off makes the CA able to
    vouch for any site on every client that trusts it: see THREAT_MODEL.md."""
    permitted_domains: tuple[Hostname, ...] = ()
    """DNS subtrees the CA may sign for; empty = the intercepted hosts themselves and the
    suffixes of their `*.` patterns. Never a single label or a public suffix."""
    ca_lifetime_days: int = field(default=3650, metadata=check(between(1, 36500)))
    leaf_lifetime_days: int = field(default=30, metadata=check(between(1, 89)))
    """Leaf validity; with the 1-hour backdate it stays within 90 days."""
    rotate_overlap_days: int = field(default=30, metadata=check(between(0, 3650)))
    """After `ca rotate`, how long clients that trust only the old CA keep working."""
    allow_clients: tuple[IPNetwork, ...] = field(
        default=(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")),
        metadata=check(non_empty),
    )
    """Clients that may connect to the HTTPS listener; others are closed before a byte
    is read. Default: everyone who can reach it (`dns.allow_clients` does not apply)."""
    max_connections_per_client: int = field(default=256, metadata=check(between(1, 65536)))
    """Connections one client address may hold open at once (ClientHellos pending, TLS
    handshakes and served connections alike); more are closed at once."""
    max_pending_per_client: int = field(default=128, metadata=check(between(1, 1024)))
    """Of those, how many may still be before the end of their TLS handshake (a
    ClientHello awaited, a leaf chosen, the handshake); more are closed at once. Every
    new connection is shed while 1,024 are pending in all: at 128 it takes 8 addresses
    that stall their hellos to get there. IPv6 addresses also share 512 per /64."""


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    ca_bundle: Path | None = None
    """Extra CA certificates (PEM) trusted for upstream TLS, besides the system roots."""
    connect_timeout_s: float = field(default=10.0, metadata=check(between(0.1, 120)))
    read_timeout_s: float = field(default=60.0, metadata=check(between(1, 3600)))
    """Longest wait for the next bytes of an upstream body; there is no total limit."""
    max_fills: int = field(default=256, metadata=check(between(1, 65536)))
    """Blob transfers from upstream at once; beyond it clients get 503 and retry."""
    negative_ttl_s: float = field(default=30.0, metadata=check(between(0, 3600)))
    """Upstream 404s for manifests are replayed (per credential) this long; a write to
    the repository through regcache (a push, a signature) forgets them at once."""


@dataclass(frozen=True, slots=True)
class StoreConfig:
    max_size: Size = Size(percent=80.0)  # noqa: RUF009 - a frozen value
    """Bound on what the store keeps: bytes or a share of its filesystem."""
    high_watermark_pct: int = field(default=95, metadata=check(between(1, 100)))
    """Eviction starts when the store holds more than this share of `max_size`…"""
    low_watermark_pct: int = field(default=85, metadata=check(between(1, 100)))
    """…and removes least recently used content until it holds at most this share."""
    min_free: Size = Size(percent=5.0)  # noqa: RUF009
    """Free space kept on the filesystem: below it eviction runs, also under `max_size`."""
    check_interval_s: float = field(default=30.0, metadata=check(between(1, 3600)))
    """How often usage is checked (also after every fill and when the disk fills)."""
    s3: S3Config | None = None
    """A second tier in an S3-compatible bucket shared by several gateways (shared.py)."""


@dataclass(frozen=True, slots=True)
class CredentialsConfig:
    """regcache's own credentials for a registry, used only for requests whose client
    sends none (THREAT_MODEL.md: every such client then gets what they open)."""

    method: str = field(metadata=check(one_of("basic", "token", "static")))
    """basic: HTTP Basic on every request; token: the bearer-token flow with username and
    password; static: a bearer token as it is."""
    username: str | None = None
    password: SecretRef | None = field(default=None, metadata=check(one_source))
    token: SecretRef | None = field(default=None, metadata=check(one_source))
    helper: tuple[str, ...] = ()
    """A command printing JSON {"username", "password"} or {"token"}, optionally with
    "expires_in_s"; re-run before that expiry (or every `helper_refresh_s`)."""
    helper_refresh_s: int = field(default=3600, metadata=check(between(10, 86400)))
    lend: bool = True
    """Lend them to client reads that bring no credentials (everyone on the build network
    then reads what they open). false: only regcache's own requests use them: the managed
    mirror's sync (`mirror.entries`, access `upstream` for what they open)."""


@dataclass(frozen=True, slots=True)
class AdminConfig:
    listen: tuple[Endpoint, ...] = (Endpoint(IPv4Address("127.0.0.1"), 9580),)
    """Where `/metrics`, `/healthz` and `/readyz` are served (plain HTTP); empty: off."""
    allow_clients: tuple[IPNetwork, ...] = tuple(
        ipaddress.ip_network(n) for n in ("127.0.0.0/8", "::1/128")
    )
    """Only these clients get an answer (403 otherwise)."""
    token: SecretRef | None = field(default=None, metadata=check(one_source))
    """When set, every request needs `Authorization: Bearer <token>`."""


@dataclass(frozen=True, slots=True)
class AuditConfig:
    enabled: bool = True
    path: Path | None = None
    """Default `<state_dir>/audit.jsonl` (the package's unit: /var/lib/regcache)."""
    max_bytes: Size = Size(100 << 20)  # noqa: RUF009
    """Rotated at this size…"""
    keep: int = field(default=5, metadata=check(between(1, 1000)))
    """…keeping this many older files (`audit.jsonl.1` is the newest)."""


@dataclass(frozen=True, slots=True)
class AccessConfig:
    """Who may be served cached content (see THREAT_MODEL.md, private content)."""

    verified_ttl_s: int = field(default=300, metadata=check(between(1, 86400)))
    """How long upstream's yes to a credential for a digest in a repository is trusted."""
    public_ttl_s: int = field(default=3600, metadata=check(between(1, 7 * 86400)))
    """How long a repository found anonymously pullable (by its tags) is served to anyone,
    for the digests known to be in it."""
    outage_grace_s: int = field(default=86400, metadata=check(between(0, 30 * 86400)))
    """While upstream is down, yeses (and public status) this recent still open the store;
    offline mode serves public content however old its status."""


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    name: str
    """A short label used in logs and metrics (e.g. `docker.io`)."""
    hosts: tuple[HostPattern, ...] = field(metadata=check(non_empty))
    """API hosts (`registry-1.docker.io`) or `*.suffix` patterns: intercepted."""
    auth_hosts: tuple[HostPattern, ...] = ()
    """Token-realm hosts from `WWW-Authenticate`."""
    intercept_auth_hosts: bool = True
    """Intercept `auth_hosts` too, for build hosts without a direct route out; regcache
    then sees passwords on their way to the token endpoint (THREAT_MODEL.md)."""
    redirect_hosts: tuple[HostPattern, ...] = ()
    """Where blobs get redirected (CDNs). Never intercepted: regcache follows redirects."""
    tag_ttl_s: int = field(default=0, metadata=check(between(0, 86400 * 30)))
    """Serve a tag from the store without asking upstream for this long after it was last
    checked. 0 (default): revalidate every tag request with an upstream HEAD."""
    fail_open: bool = True
    """While the proxy is unhealthy, DNS answers this registry's real addresses instead of
    the appliance's, so builds pull directly rather than fail."""
    max_stale_s: int = field(default=30 * 86400, metadata=check(between(0, 3650 * 86400)))
    """While upstream is down (unreachable, 5xx, 429), answer a tag from its last validated
    mapping if that is at most this old (stale-if-error); 0 turns that off."""
    credentials: CredentialsConfig | None = None
    """regcache's own login to this registry's API hosts, lent to reads that bring none;
    unset (default): clients bring their own."""
    push: tuple[PushRule, ...] = ()
    """Pushes through regcache per repository (config/push.py); none: all pass through."""
    allow_unsafe_targets: bool = False
    """Let this registry's redirects and token realms lead to http:// URLs and to
    loopback, link-local or metadata addresses, and its hosts resolve to them (a registry
    on the gateway itself). Off: that is how a hostile redirect reaches the admin listener
    or a cloud metadata service. Names in `resolve` are always allowed."""


@dataclass(frozen=True, slots=True)
class Config:
    appliance: ApplianceConfig
    registries: tuple[RegistryConfig, ...] = field(metadata=check(non_empty))
    listen: ListenConfig = ListenConfig()
    state_dir: Path = Path("/var/lib/regcache")
    """CA, store and index. Relative paths are taken from the config file's folder."""
    offline: bool = False
    """Never contact upstream: serve only what the store holds (as during an outage).
    `regcache offline on|off` switches it at run time without a restart."""
    log_level: str = field(
        default="INFO", metadata=check(one_of("DEBUG", "INFO", "WARNING", "ERROR"))
    )
    dns: DnsConfig = DnsConfig()
    tls: TlsConfig = TlsConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    access: AccessConfig = AccessConfig()
    store: StoreConfig = StoreConfig()
    admin: AdminConfig = AdminConfig()
    audit: AuditConfig = AuditConfig()
    mirror: MirrorConfig = MirrorConfig()  # noqa: RUF009 - a frozen value
    """The managed mirror: tags kept as decided, synced on a schedule (config/mirror.py)."""
    local: LocalConfig = LocalConfig()  # noqa: RUF009 - a frozen value
    """A registry on the gateway only: pushed to and pulled from regcache (config/local.py)."""
    mirror_mode: MirrorModeConfig = MirrorModeConfig()  # noqa: RUF009 - a frozen value
    """regcache as an explicit mirror beside DNS interception (config/mirrormode.py)."""
    peers: PeersConfig | None = None
    """The site's other gateways: one of them fills each cold blob for all (config/peers.py)."""
    resolve: dict[Hostname, tuple[IPAddress, ...]] = field(default_factory=dict)
    """Static upstream addresses per host, bypassing DNS (split horizon, tests)."""

    def audit_path(self) -> Path:
        return self.audit.path or self.state_dir / "audit.jsonl"


def load_config(path: Path | str) -> Config:
    """Read, parse and validate a config file, or raise `ConfigError` with file:line: key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config: {e}") from e
    return parse_config(text, origin=path)


def parse_config(text: str, origin: Path) -> Config:
    try:
        config, lines = strict_yaml.load(Config, text, SCALARS)
        _validate(config, lines)
    except strict_yaml.SchemaError as e:
        raise ConfigError(f"{origin}, line {e.line}: {e.key or '<top level>'}: {e.message}") from e
    if not config.state_dir.is_absolute():
        config = replace(config, state_dir=origin.parent.resolve() / config.state_dir)
    return config


_Fail = Callable[[str, str], NoReturn]
"""Raise a `SchemaError` at a dotted key (its line) with a message."""


def _validate(config: Config, lines: dict[str, int]) -> None:
    """Checks that span several keys; each error points at the key that must change."""

    def fail(key: str, message: str) -> NoReturn:
        raise strict_yaml.SchemaError(key, lines.get(key, 1), message)

    _check_registries(config.registries, fail)
    _check_tls(config, fail)
    _check_store_and_audit(config, fail)
    check_entries(config.mirror.entries, Registries.of(config), fail)
    check_local(config.local, Registries.of(config), fail)
    check_mirror_mode(config, Registries.of(config), fail)
    check_peers(config.peers, config.appliance.addresses(), fail)
    for i, upstream in enumerate(config.dns.upstreams):
        if any(own.receives(upstream) for own in config.listen.dns):
            fail(
                f"dns.upstreams[{i}]", "is regcache's own DNS listener: it would forward to itself"
            )


def _check_registries(registries: tuple[RegistryConfig, ...], fail: _Fail) -> None:
    """Unique names; every intercepted host or pattern listed once and never too broad."""
    owner: dict[str, str] = {}
    names: set[str] = set()
    for i, registry in enumerate(registries):
        if registry.credentials is not None:
            _check_credentials(registry.credentials, f"registries[{i}].credentials", fail)
        if registry.name in names:
            fail(f"registries[{i}].name", f"duplicate registry name {registry.name!r}")
        names.add(registry.name)
        for group in ("hosts", "auth_hosts"):
            for j, pattern in enumerate(getattr(registry, group)):
                if owner.setdefault(pattern, registry.name) != registry.name:
                    fail(
                        f"registries[{i}].{group}[{j}]",
                        f"{pattern!r} is already listed by registry {owner[pattern]!r}",
                    )
    for i, registry in enumerate(registries):
        for group in ("hosts", "auth_hosts"):
            for j, pattern in enumerate(getattr(registry, group)):
                problem = pattern.startswith("*.") and too_broad(pattern[2:])
                if problem:
                    fail(f"registries[{i}].{group}[{j}]", f"intercepting {pattern!r}: {problem}")


def _check_credentials(creds: CredentialsConfig, key: str, fail: _Fail) -> None:
    if creds.helper:
        return
    if creds.method == "static" and creds.token is None:
        fail(key, "method 'static' needs 'token' (file or env) or a 'helper'")
    if creds.method != "static" and (creds.username is None or creds.password is None):
        fail(key, f"method {creds.method!r} needs 'username' and 'password' or a 'helper'")


def _check_tls(config: Config, fail: _Fail) -> None:
    for i, domain in enumerate(config.tls.permitted_domains):
        problem = too_broad(domain)
        if problem:
            fail(f"tls.permitted_domains[{i}]", problem)
    if config.tls.name_constraints and config.tls.permitted_domains:
        outside = Registries.of(config).hosts_outside(config.tls.permitted_domains)
        if outside:
            fail(
                "tls.permitted_domains",
                f"intercepted hosts {', '.join(outside)} lie outside every permitted domain; "
                "add their domain here (then run `regcache ca rotate`)",
            )


def _check_store_and_audit(config: Config, fail: _Fail) -> None:
    if config.audit.max_bytes.percent is not None:
        fail("audit.max_bytes", "must be a size in bytes, not a percentage")
    if config.audit.path is not None and not config.audit.path.is_absolute():
        fail("audit.path", "must be an absolute path")
    if config.store.low_watermark_pct >= config.store.high_watermark_pct:
        fail("store.low_watermark_pct", "must be below store.high_watermark_pct")


def default_config_path() -> Path:
    return Path(os.environ.get("REGCACHE_CONFIG", DEFAULT_PATH))
