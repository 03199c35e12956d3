"""The regcache configuration: frozen dataclasses loaded strictly from one YAML file.

Every default is documented beside its field; `config.example.yaml` shows them in use.
Errors name the file, the line and the dotted key (`registries[2].hosts[0]`).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

from appliance import strict_yaml
from appliance.hostnames import (
    Hostname,
    HostPattern,
    HostSet,
    check_hostname,
    check_pattern,
    is_within,
    too_broad,
)
from appliance.strict_yaml import check

DEFAULT_PATH = Path("/etc/regcache/config.yaml")

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

# Loopback and the private ranges: regcache must never be an open resolver.
_PRIVATE_CLIENTS = (
    "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
    "::1/128", "fc00::/7", "fe80::/10",
)  # fmt: skip


class ConfigError(ValueError):
    """An invalid configuration; the message names the file, line and dotted key."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """An IP address and port, written `127.0.0.1:53` or `[::1]:53` in YAML."""

    address: IPAddress
    port: int

    @classmethod
    def parse(cls, text: Any) -> Endpoint:
        if not isinstance(text, str):
            raise ValueError(f"expected 'ADDRESS:PORT', got {text!r}")
        host, sep, port = text.rpartition(":")
        if not sep or (":" in host and not host.startswith("[")):
            raise ValueError(f"expected 'ADDRESS:PORT' (IPv6 as '[ADDR]:PORT'), got {text!r}")
        address = host.removeprefix("[").removesuffix("]")
        try:
            ip = ipaddress.ip_address(address)
        except ValueError as e:
            raise ValueError(f"{address!r} is not an IP address") from e
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"port {port!r} is not a number in 1..65535")
        return cls(ip, int(port))

    def __str__(self) -> str:
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{host}:{self.port}"

    def receives(self, destination: Endpoint) -> bool:
        """Whether a listener here gets what is sent to `destination` (for loop checks)."""
        if self.port != destination.port:
            return False
        if self.address.is_unspecified:
            return destination.address.is_loopback or destination.address.version == (
                self.address.version
            )
        return self.address == destination.address


def _positive(value: float) -> None:
    if value <= 0:
        raise ValueError(f"must be greater than 0, got {value}")


def _non_negative(value: float) -> None:
    if value < 0:
        raise ValueError(f"must not be negative, got {value}")


def _between(low: float, high: float) -> Any:
    def _check(value: float) -> None:
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {value}")

    return _check


def _one_of(*choices: str) -> Any:
    def _check(value: str) -> None:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {value!r}")

    return _check


def _non_empty(value: tuple[object, ...]) -> None:
    if not value:
        raise ValueError("must not be empty")


@dataclass(frozen=True, slots=True)
class ListenConfig:
    dns: tuple[Endpoint, ...] = field(
        default=(Endpoint(IPv4Address("0.0.0.0"), 53),),  # noqa: S104 - the gateway serves its LAN
        metadata=check(_non_empty),
    )
    """UDP+TCP addresses of the DNS responder; production uses port 53."""
    https: tuple[Endpoint, ...] = field(
        default=(Endpoint(IPv4Address("0.0.0.0"), 443),),  # noqa: S104
        metadata=check(_non_empty),
    )
    """Addresses of the TLS-terminating proxy; production uses port 443."""
    https_loops: int = field(default=0, metadata=check(_between(0, 64)))
    """Event loops carrying TLS connections, each in its own thread; 0: one per CPU
    (at most 8). Serving stored blobs is mostly GIL-free TLS and I/O, so it scales."""


@dataclass(frozen=True, slots=True)
class ApplianceConfig:
    ipv4: IPv4Address
    """The address intercepted names resolve to (A records): the gateway's address."""
    ipv6: IPv6Address | None = None
    """AAAA answer; when unset AAAA gets an empty NOERROR so clients fall back to IPv4."""


@dataclass(frozen=True, slots=True)
class DnsConfig:
    ttl_s: int = field(default=60, metadata=check(_between(1, 86400)))
    """TTL of intercepted answers; short so that turning regcache off takes effect soon."""
    upstreams: tuple[Endpoint, ...] = ()
    """Real resolvers for everything else; empty = the nameservers in `resolv_conf`."""
    resolv_conf: Path = Path("/etc/resolv.conf")
    upstream_timeout_s: float = field(default=2.0, metadata=check(_between(0.05, 30)))
    """Per upstream attempt; after all upstreams time out the client gets SERVFAIL."""
    allow_clients: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n) for n in _PRIVATE_CLIENTS)
    """Clients outside these networks get REFUSED (never an open resolver)."""
    rate_limit_qps: float = field(default=500.0, metadata=check(_non_negative))
    """Sustained queries per second per client address; 0 disables the limit."""
    rate_limit_burst: int = field(default=1000, metadata=check(_positive))
    max_inflight_forwards: int = field(default=512, metadata=check(_between(1, 65536)))
    """Forwards waiting on upstream at once; beyond this clients get SERVFAIL at once."""
    tcp_max_connections: int = field(default=256, metadata=check(_between(1, 65536)))
    tcp_idle_timeout_s: float = field(default=10.0, metadata=check(_between(0.1, 10)))


@dataclass(frozen=True, slots=True)
class TlsConfig:
    name_constraints: bool = True
    """Critical X.509 Name Constraints on the CA. Turning this off makes the CA able to
    vouch for any site on every client that trusts it: see THREAT_MODEL.md."""
    permitted_domains: tuple[Hostname, ...] = ()
    """DNS subtrees the CA may sign for; empty = the intercepted hosts themselves and the
    suffixes of their `*.` patterns. Never a single label or a public suffix."""
    ca_lifetime_days: int = field(default=3650, metadata=check(_between(1, 36500)))
    leaf_lifetime_days: int = field(default=30, metadata=check(_between(1, 89)))
    """Leaf validity; with the 1-hour backdate it stays within 90 days."""
    rotate_overlap_days: int = field(default=30, metadata=check(_between(0, 3650)))
    """After `ca rotate`, how long clients that trust only the old CA keep working."""


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    ca_bundle: Path | None = None
    """Extra CA certificates (PEM) trusted for upstream TLS, besides the system roots."""
    connect_timeout_s: float = field(default=10.0, metadata=check(_between(0.1, 120)))
    read_timeout_s: float = field(default=60.0, metadata=check(_between(1, 3600)))
    """Longest wait for the next bytes of an upstream body; there is no total limit."""
    max_fills: int = field(default=256, metadata=check(_between(1, 65536)))
    """Blob transfers from upstream at once; beyond it clients get 503 and retry."""
    negative_ttl_s: float = field(default=30.0, metadata=check(_between(0, 3600)))
    """Upstream 404s for manifests and blobs are replayed (per credential) this long."""


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Size:
    """A byte count (`50GiB`, `500MB`, `1048576`) or a share of the store's filesystem
    (`80%`)."""

    bytes: int = 0
    percent: float | None = None

    @classmethod
    def parse(cls, value: Any) -> Size:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return cls(value)
        text = str(value).strip().replace(" ", "") if isinstance(value, str) else ""
        if text.endswith("%"):
            try:
                percent = float(text[:-1])
            except ValueError:
                percent = -1.0
            if not 0 < percent <= 100:
                raise ValueError(f"expected a percentage in (0, 100], got {value!r}")
            return cls(percent=percent)
        split = len(text) - len(text.lstrip("0123456789."))
        number, unit = text[:split], text[split:].upper()
        try:
            amount = float(number)
        except ValueError:
            amount = -1.0
        if unit not in _UNITS or amount < 0:
            raise ValueError(
                f"expected a size like '50GiB', '500MB', a byte count or '80%', got {value!r}"
            )
        return cls(int(amount * _UNITS[unit]))

    def of(self, filesystem_bytes: int) -> int:
        if self.percent is None:
            return self.bytes
        return int(filesystem_bytes * self.percent / 100)


@dataclass(frozen=True, slots=True)
class StoreConfig:
    max_size: Size = Size(percent=80.0)
    """Bound on what the store keeps: bytes or a share of its filesystem."""
    high_watermark_pct: int = field(default=95, metadata=check(_between(1, 100)))
    """Eviction starts when the store holds more than this share of `max_size`…"""
    low_watermark_pct: int = field(default=85, metadata=check(_between(1, 100)))
    """…and removes least recently used content until it holds at most this share."""
    min_free: Size = Size(percent=5.0)
    """Free space kept on the filesystem: below it eviction runs, also under `max_size`."""
    check_interval_s: float = field(default=30.0, metadata=check(_between(1, 3600)))
    """How often usage is checked (also after every fill and when the disk fills)."""


@dataclass(frozen=True, slots=True)
class SecretRef:
    """Where a secret lives: a file (read at each use, so rotation needs no restart) or
    an environment variable. Never the config itself."""

    file: Path | None = None
    env: str | None = None

    def read(self) -> str:
        if self.file is not None:
            return self.file.read_text(encoding="utf-8").strip()
        assert self.env is not None
        value = os.environ.get(self.env)
        if value is None:
            raise OSError(f"environment variable {self.env} is not set")
        return value


def _one_source(ref: SecretRef) -> None:
    if (ref.file is None) == (ref.env is None):
        raise ValueError("give exactly one of 'file' and 'env'")


@dataclass(frozen=True, slots=True)
class CredentialsConfig:
    """regcache's own credentials for a registry, used only for requests whose client
    sends none (THREAT_MODEL.md: every such client then gets what they open)."""

    method: str = field(metadata=check(_one_of("basic", "token", "static")))
    """basic: HTTP Basic on every request; token: the bearer-token flow with username and
    password; static: a bearer token as it is."""
    username: str | None = None
    password: SecretRef | None = field(default=None, metadata=check(_one_source))
    token: SecretRef | None = field(default=None, metadata=check(_one_source))
    helper: tuple[str, ...] = ()
    """A command printing JSON {"username", "password"} or {"token"}, optionally with
    "expires_in_s"; re-run before that expiry (or every `helper_refresh_s`)."""
    helper_refresh_s: int = field(default=3600, metadata=check(_between(10, 86400)))


@dataclass(frozen=True, slots=True)
class AdminConfig:
    listen: tuple[Endpoint, ...] = (Endpoint(IPv4Address("127.0.0.1"), 9580),)
    """Where `/metrics`, `/healthz` and `/readyz` are served (plain HTTP); empty: off."""
    allow_clients: tuple[IPNetwork, ...] = tuple(
        ipaddress.ip_network(n) for n in ("127.0.0.0/8", "::1/128")
    )
    """Only these clients get an answer (403 otherwise)."""
    token: SecretRef | None = field(default=None, metadata=check(_one_source))
    """When set, every request needs `Authorization: Bearer <token>`."""


@dataclass(frozen=True, slots=True)
class AuditConfig:
    enabled: bool = True
    path: Path | None = None
    """Default `<state_dir>/audit.jsonl` (the package's unit: /var/lib/regcache)."""
    max_bytes: Size = Size(100 << 20)
    """Rotated at this size…"""
    keep: int = field(default=5, metadata=check(_between(1, 1000)))
    """…keeping this many older files (`audit.jsonl.1` is the newest)."""


@dataclass(frozen=True, slots=True)
class AccessConfig:
    """Who may be served cached content (see THREAT_MODEL.md, private content)."""

    verified_ttl_s: int = field(default=300, metadata=check(_between(1, 86400)))
    """How long upstream's yes to a credential for a digest in a repository is trusted."""
    public_ttl_s: int = field(default=3600, metadata=check(_between(1, 7 * 86400)))
    """How long a repository found anonymously pullable (by its tags) is served to anyone,
    for the digests known to be in it."""
    outage_grace_s: int = field(default=86400, metadata=check(_between(0, 30 * 86400)))
    """While upstream is down, yeses (and public status) this recent still open the store;
    offline mode serves public content however old its status."""


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    name: str
    """A short label used in logs and metrics (e.g. `docker.io`)."""
    hosts: tuple[HostPattern, ...] = field(metadata=check(_non_empty))
    """API hosts (`registry-1.docker.io`) or `*.suffix` patterns: intercepted."""
    auth_hosts: tuple[HostPattern, ...] = ()
    """Token-realm hosts from `WWW-Authenticate`."""
    intercept_auth_hosts: bool = True
    """Intercept `auth_hosts` too, for build hosts without a direct route out; regcache
    then sees passwords on their way to the token endpoint (THREAT_MODEL.md)."""
    redirect_hosts: tuple[HostPattern, ...] = ()
    """Where blobs get redirected (CDNs). Never intercepted: regcache follows redirects."""
    tag_ttl_s: int = field(default=0, metadata=check(_between(0, 86400 * 30)))
    """Serve a tag from the store without asking upstream for this long after it was last
    checked. 0 (default): revalidate every tag request with an upstream HEAD."""
    fail_open: bool = True
    """While the proxy is unhealthy, DNS answers this registry's real addresses instead of
    the appliance's, so builds pull directly rather than fail."""
    max_stale_s: int = field(default=30 * 86400, metadata=check(_between(0, 3650 * 86400)))
    """While upstream is down (unreachable, 5xx, 429), answer a tag from its last validated
    mapping if that is at most this old (stale-if-error); 0 turns that off."""
    credentials: CredentialsConfig | None = None
    allow_unsafe_targets: bool = False
    """Let this registry's redirects and token realms lead to http:// URLs and to
    loopback, link-local or metadata addresses, and its hosts resolve to them (a registry
    on the gateway itself). Off: that is how a hostile redirect reaches the admin listener
    or a cloud metadata service. Names in `resolve` are always allowed."""

    def intercepted_patterns(self) -> tuple[HostPattern, ...]:
        return self.hosts + (self.auth_hosts if self.intercept_auth_hosts else ())

    def all_patterns(self) -> tuple[HostPattern, ...]:
        """API, auth and redirect hosts: every host regcache talks to for this registry."""
        return self.hosts + self.auth_hosts + self.redirect_hosts


@dataclass(frozen=True, slots=True)
class Config:
    appliance: ApplianceConfig
    registries: tuple[RegistryConfig, ...] = field(metadata=check(_non_empty))
    listen: ListenConfig = ListenConfig()
    state_dir: Path = Path("/var/lib/regcache")
    """CA, store and index. Relative paths are taken from the config file's folder."""
    offline: bool = False
    """Never contact upstream: serve only what the store holds (as during an outage).
    `regcache offline on|off` switches it at run time without a restart."""
    log_level: str = field(
        default="INFO", metadata=check(_one_of("DEBUG", "INFO", "WARNING", "ERROR"))
    )
    dns: DnsConfig = DnsConfig()
    tls: TlsConfig = TlsConfig()
    upstream: UpstreamConfig = UpstreamConfig()
    access: AccessConfig = AccessConfig()
    store: StoreConfig = StoreConfig()
    admin: AdminConfig = AdminConfig()
    audit: AuditConfig = AuditConfig()
    resolve: dict[Hostname, tuple[IPAddress, ...]] = field(default_factory=dict)
    """Static upstream addresses per host, bypassing DNS (split horizon, tests)."""

    def audit_path(self) -> Path:
        return self.audit.path or self.state_dir / "audit.jsonl"

    def intercepted(self) -> HostSet:
        """The one host set behind DNS interception, the TLS allow-list and routing."""
        return HostSet.of(p for r in self.registries for p in r.intercepted_patterns())

    def fail_open_hosts(self) -> HostSet:
        return HostSet.of(
            p for r in self.registries if r.fail_open for p in r.intercepted_patterns()
        )

    def permitted_domains(self) -> tuple[Hostname, ...]:
        """The CA's DNS subtrees: as configured, else exactly what is intercepted (a
        host, or the suffix of a `*.` pattern), without names another entry covers."""
        if self.tls.permitted_domains:
            return self.tls.permitted_domains
        domains = {p.removeprefix("*.") for p in self.intercepted().patterns()}
        return tuple(
            Hostname(d)
            for d in sorted(domains)
            if not any(other != d and is_within(d, other) for other in domains)
        )

    def hosts_outside(self, permitted: tuple[str, ...]) -> list[str]:
        """Intercepted patterns a CA constrained to `permitted` cannot sign for."""
        return [
            p
            for p in self.intercepted().patterns()
            if not any(is_within(p.removeprefix("*."), d) for d in permitted)
        ]


def _typed(tp: type[Any]) -> Any:
    def parse(value: Any) -> Any:
        if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise ValueError(f"expected an integer, got {value!r}")
        if tp is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"expected a number, got {value!r}")
            return float(value)
        if not isinstance(value, tp):
            raise ValueError(
                f"expected {tp.__name__ if tp is not str else 'a string'}, got {value!r}"
            )
        return value

    return parse


def _ip(tp: Any) -> Any:
    def parse(value: Any) -> Any:
        try:
            return tp(str(value))
        except ValueError as e:
            raise ValueError(f"{value!r} is not an {tp.__name__[:4]} address") from e

    return parse


def _text(parse: Any) -> Any:
    return lambda value: parse(_typed(str)(value))


def _any_ip(value: Any) -> IPAddress:
    return ipaddress.ip_address(str(value))


def _network(value: Any) -> IPNetwork:
    try:
        return ipaddress.ip_network(str(value), strict=True)
    except ValueError as e:
        raise ValueError(f"{value!r} is not a network in CIDR notation: {e}") from e


_SCALARS: dict[object, strict_yaml.Parser] = {
    str: _typed(str),
    int: _typed(int),
    float: _typed(float),
    bool: _typed(bool),
    Path: lambda v: Path(_typed(str)(v)),
    IPv4Address: _ip(IPv4Address),
    IPv6Address: _ip(IPv6Address),
    IPAddress: _any_ip,
    IPNetwork: _network,
    Endpoint: Endpoint.parse,
    Size: Size.parse,
    Hostname: _text(check_hostname),
    HostPattern: _text(check_pattern),
}


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
        config, lines = strict_yaml.load(Config, text, _SCALARS)
        _validate(config, lines)
    except strict_yaml.SchemaError as e:
        raise ConfigError(f"{origin}, line {e.line}: {e.key or '<top level>'}: {e.message}") from e
    if not config.state_dir.is_absolute():
        config = replace(config, state_dir=origin.parent.resolve() / config.state_dir)
    return config


def _validate(config: Config, lines: dict[str, int]) -> None:
    """Checks that span several keys; each error points at the key that must change."""

    def fail(key: str, message: str) -> None:
        raise strict_yaml.SchemaError(key, lines.get(key, 1), message)

    owner: dict[str, str] = {}
    names: set[str] = set()
    for i, registry in enumerate(config.registries):
        creds = registry.credentials
        if creds is not None:
            key = f"registries[{i}].credentials"
            if not creds.helper:
                if creds.method == "static" and creds.token is None:
                    fail(key, "method 'static' needs 'token' (file or env) or a 'helper'")
                if creds.method != "static" and (creds.username is None or creds.password is None):
                    fail(
                        key,
                        f"method {creds.method!r} needs 'username' and 'password' or a 'helper'",
                    )
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
    for i, registry in enumerate(config.registries):
        for group in ("hosts", "auth_hosts"):
            for j, pattern in enumerate(getattr(registry, group)):
                problem = pattern.startswith("*.") and too_broad(pattern[2:])
                if problem:
                    fail(f"registries[{i}].{group}[{j}]", f"intercepting {pattern!r}: {problem}")
    for i, domain in enumerate(config.tls.permitted_domains):
        problem = too_broad(domain)
        if problem:
            fail(f"tls.permitted_domains[{i}]", problem)
    if config.tls.name_constraints and config.tls.permitted_domains:
        outside = config.hosts_outside(config.tls.permitted_domains)
        if outside:
            fail(
                "tls.permitted_domains",
                f"intercepted hosts {', '.join(outside)} lie outside every permitted domain; "
                "add their domain here (then run `regcache ca rotate`)",
            )
    if config.audit.max_bytes.percent is not None:
        fail("audit.max_bytes", "must be a size in bytes, not a percentage")
    if config.audit.path is not None and not config.audit.path.is_absolute():
        fail("audit.path", "must be an absolute path")
    if config.store.low_watermark_pct >= config.store.high_watermark_pct:
        fail("store.low_watermark_pct", "must be below store.high_watermark_pct")
    for i, upstream in enumerate(config.dns.upstreams):
        if any(own.receives(upstream) for own in config.listen.dns):
            fail(
                f"dns.upstreams[{i}]", "is regcache's own DNS listener: it would forward to itself"
            )


def default_config_path() -> Path:
    return Path(os.environ.get("REGCACHE_CONFIG", DEFAULT_PATH))
