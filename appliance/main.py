"""Composition root: builds every part from the config, runs them, shuts down cleanly."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import ipaddress
import logging
import os
import resource
import signal
import time
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from appliance.audit import AuditLog
from appliance.cache.access import AccessGate
from appliance.cache.fingerprint import Fingerprints
from appliance.cache.negative import NegativeCache
from appliance.cache.service import RegistryCache
from appliance.config import Config, ConfigError, Endpoint, load_config
from appliance.dns.client import ResolverError, UpstreamResolver, nameservers_from
from appliance.dns.ratelimit import RateLimiter
from appliance.dns.responder import Interception, Responder
from appliance.dns.server import DnsServer, ServerLimits
from appliance.health import HealthMonitor, NamedCheck
from appliance.hostnames import HostSet, too_broad
from appliance.metrics import Metrics
from appliance.notify import notify
from appliance.proxy.admin import create_admin_app
from appliance.proxy.app import Site, create_app, start_runner
from appliance.proxy.loops import Bridge, ServingLoops
from appliance.store.eviction import Eviction, Evictor
from appliance.store.files import FileBlobStore
from appliance.store.reconcile import open_index, reconcile
from appliance.tasks import spawn
from appliance.tls.ca import (
    CaError,
    CertificateAuthority,
    create_ca,
    expiry_warning,
    fingerprint,
    load_ca,
    to_pem,
)
from appliance.tls.leaves import LeafStore
from appliance.tls.listener import TlsListener
from appliance.upstream.client import UpstreamClient
from appliance.upstream.credentials import CredentialSource
from appliance.upstream.targets import TargetPolicy

log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """regcache cannot start with this config; the message says how to fix it."""


def ensure_ca(config: Config, now: dt.datetime) -> CertificateAuthority:
    """Load the CA, creating it on first start; refuse one that cannot sign our hosts."""
    ca = load_ca(config.state_dir)
    if ca is None:
        ca = create_ca(
            config.state_dir,
            permitted_domains=config.permitted_domains() if config.tls.name_constraints else None,
            lifetime=dt.timedelta(days=config.tls.ca_lifetime_days),
            now=now,
        )
    problem = ca_mismatch(config, ca)
    if problem:
        raise StartupError(problem)
    warning = expiry_warning(ca, now)
    if warning:
        log.warning("ca expiring %s", warning)
    broad = constraints_warning(ca)
    if broad:
        log.warning("ca constraints-too-broad %s", broad)
    return ca


def constraints_warning(ca: CertificateAuthority) -> str | None:
    """A CA made before public suffixes were refused may be constrained to one."""
    broad = [d for d in ca.permitted_domains() or () if too_broad(d)]
    if not broad:
        return None
    return (
        f"domains={','.join(broad)}: the CA may sign for names anyone can register under "
        "them; set tls.permitted_domains (or leave it unset) and run `regcache ca rotate`"
    )


def ca_mismatch(config: Config, ca: CertificateAuthority) -> str | None:
    """Why the CA cannot serve the configured hosts (clients would reject it), or None."""
    permitted = ca.permitted_domains()
    if permitted is None:
        return None
    outside = config.hosts_outside(permitted)
    if not outside:
        return None
    return (
        f"intercepted hosts {', '.join(outside)} lie outside the CA's name constraints "
        f"({', '.join(permitted)}); clients would reject their certificates. Add their "
        "domain to tls.permitted_domains and run `regcache ca rotate`, or remove the hosts."
    )


def upstream_resolver(config: Config) -> UpstreamResolver:
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


def credential_sources(config: Config) -> Callable[[str], CredentialSource | None]:
    """API host → regcache's own credentials for that registry, if configured."""
    table = [
        (HostSet.of(r.hosts), CredentialSource(r.credentials))
        for r in config.registries
        if r.credentials is not None
    ]

    def lookup(host: str) -> CredentialSource | None:
        for hosts, source in table:
            if hosts.match(host):
                return source
        return None

    return lookup


def target_policy(config: Config) -> TargetPolicy:
    """Where redirects and token realms may lead (see `allow_unsafe_targets`)."""
    allowed = (p for r in config.registries if r.allow_unsafe_targets for p in r.all_patterns())
    return TargetPolicy(HostSet.of(allowed), frozenset(config.resolve))


def site_resolver(config: Config) -> Callable[[str], Site | None]:
    """Host → the registry it belongs to, precomputed from the one `registries` list."""
    table = [
        (HostSet.of(r.hosts), HostSet.of(r.intercepted_patterns()), r) for r in config.registries
    ]

    @functools.lru_cache(maxsize=4096)
    def site_for(host: str) -> Site | None:
        for api_hosts, all_hosts, registry in table:
            if all_hosts.match(host):
                return Site(
                    registry.tag_ttl_s,
                    registry.max_stale_s,
                    api=api_hosts.match(host),
                    own_credentials=registry.credentials is not None,
                    label=all_hosts.pattern_for(host) or host,
                )
        return None

    return site_for


def host_labels(config: Config) -> Callable[[str], str]:
    """Upstream host → its metric label: the configured host or pattern it matches (API,
    auth or redirect host), else `other`. Redirects decide hosts: labels must not."""
    every = HostSet.of(p for r in config.registries for p in r.all_patterns())

    @functools.lru_cache(maxsize=4096)
    def label(host: str) -> str:
        return every.pattern_for(host) or "other"

    return label


def offline_flag(config: Config) -> Path:
    """The file `regcache offline on` creates: its presence means offline."""
    return config.state_dir / "offline"


def reload(path: Path, offline: OfflineSwitch) -> None:
    """SIGHUP: re-read the config and apply what is safe at run time (log level, offline).
    Everything else needs a restart; an invalid file changes nothing."""
    notify("RELOADING=1")
    try:
        fresh = load_config(path)
    except ConfigError as e:
        log.error("config reload refused error=%s", e)
    else:
        logging.getLogger().setLevel(fresh.log_level)
        offline.always = fresh.offline
        log.warning(
            "config reloaded log_level=%s offline=%s (other changes need a restart)",
            fresh.log_level,
            fresh.offline,
        )
    notify("READY=1")


class OfflineSwitch:
    """Offline by config, or by the flag file (checked at most once a second)."""

    def __init__(self, config: Config) -> None:
        self.always = config.offline
        self._flag = offline_flag(config)
        self._checked = 0.0
        self._value = False

    def __call__(self) -> bool:
        if self.always:
            return True
        now = time.monotonic()
        if now - self._checked >= 1.0:
            self._checked = now
            value = self._flag.exists()
            if value != self._value:
                log.warning("offline mode %s", "on" if value else "off")
            self._value = value
        return self._value


async def _listening(endpoints: tuple[Endpoint, ...]) -> str | None:
    """None if every HTTPS listener accepts a TCP connection."""
    for endpoint in endpoints:
        address = endpoint.address
        if address.is_unspecified:
            address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
        try:
            _, writer = await asyncio.open_connection(str(address), endpoint.port)
        except OSError as e:
            return f"{endpoint}: {e.strerror or e}"
        writer.close()
    return None


def _raise_fd_limit() -> None:
    """Up to the hard limit (systemd's LimitNOFILE sets both; a sandbox may forbid it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError) as e:
            log.warning("fd-limit unchanged soft=%d hard=%d error=%s", soft, hard, e)


async def serve(config: Config, path: Path) -> None:
    """Run DNS and HTTPS until SIGTERM or SIGINT; SIGHUP re-reads `path`."""
    _raise_fd_limit()
    now = dt.datetime.now(dt.UTC)
    ca = ensure_ca(config, now)
    intercepted = config.intercepted()
    resolver = upstream_resolver(config)
    metrics = Metrics(host_labels(config))
    config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    files = FileBlobStore(config.state_dir)
    health = HealthMonitor(
        [
            NamedCheck("https listener", lambda: _listening(config.listen.https)),
            NamedCheck("store", lambda: asyncio.to_thread(files.check_writable)),
            NamedCheck("https loops", lambda: loops.stalled()),
        ]
    )
    responder = Responder(
        Interception(
            intercepted,
            config.appliance.ipv4,
            config.appliance.ipv6,
            config.dns.ttl_s,
            fail_open=config.fail_open_hosts(),
            healthy=lambda: health.healthy,
            real_addresses={str(host): addresses for host, addresses in config.resolve.items()},
        ),
        resolver,
        config.dns.allow_clients,
        config.dns.max_inflight_forwards,
        count=lambda qtype, outcome: metrics.dns.labels(qtype, outcome).inc(),
    )
    dns = DnsServer(
        responder,
        RateLimiter(config.dns.rate_limit_qps, config.dns.rate_limit_burst),
        ServerLimits(
            max_pending_udp=4 * config.dns.max_inflight_forwards,
            max_connections=config.dns.tcp_max_connections,
            idle_timeout_s=config.dns.tcp_idle_timeout_s,
        ),
    )
    leaves = LeafStore(ca, intercepted, dt.timedelta(days=config.tls.leaf_lifetime_days))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    index, _ = await open_index(config.state_dir)
    await reconcile(index, files, at_start=True)
    offline_switch = OfflineSwitch(config)
    loop.add_signal_handler(signal.SIGHUP, lambda: reload(path, offline_switch))
    upstream = UpstreamClient(
        resolver.resolve,
        config.upstream.ca_bundle,
        config.upstream.connect_timeout_s,
        config.upstream.read_timeout_s,
        offline=offline_switch,
        credentials=credential_sources(config),
        on_reply=metrics.upstream_reply,
        targets=target_policy(config),
    )
    gate = AccessGate(
        upstream,
        index,
        files,
        fingerprints=Fingerprints.for_install(config.state_dir),
        verified_ttl_s=config.access.verified_ttl_s,
        public_ttl_s=config.access.public_ttl_s,
        outage_grace_s=config.access.outage_grace_s,
        offline=offline_switch,
    )

    def evicted(eviction: Eviction) -> None:
        metrics.evicted_rows.inc(eviction.rows)
        metrics.evicted_bytes.inc(eviction.bytes)

    evictor = Evictor(index, files, config.store, on_evicted=evicted)

    cache = RegistryCache(
        files,
        index,
        upstream,
        gate,
        NegativeCache(config.upstream.negative_ttl_s),
        max_fills=config.upstream.max_fills,
        space=evictor,
        on_fill_finished=lambda state, s: metrics.fill_seconds.labels(state).observe(s),
    )
    evictor.busy = cache.filling
    metrics.watch(lambda: evictor.stored, config.state_dir, lambda: cache.coalesced)
    audit = (
        AuditLog(config.audit_path(), config.audit.max_bytes.bytes, config.audit.keep)
        if config.audit.enabled
        else None
    )

    def proxy_app(bridge: Bridge | None) -> web.Application:
        sites, write_audit = site_resolver(config), audit.write if audit else None
        return create_app(cache, upstream, sites, metrics, write_audit, bridge)

    runner = await start_runner(proxy_app(None))
    loops = ServingLoops(_https_loops(config) - 1, proxy_app)

    async def ready() -> list[str]:
        problems = [] if dns.listening else ["dns listener: not listening"]
        return problems + list(await health.check_once())

    token = config.admin.token.read() if config.admin.token else None
    admin = web.AppRunner(
        create_admin_app(
            metrics,
            ready,
            config.admin.allow_clients,
            token,
            ca_pem=lambda: to_pem(ca.trust_bundle(dt.datetime.now(dt.UTC))),
            ca_fingerprint=lambda: fingerprint(ca.cert),
        ),
        access_log=None,
        handle_signals=False,
    )
    await admin.setup()
    assert runner.server is not None
    background: list[asyncio.Task[None]] = []
    https: TlsListener | None = None
    try:
        await loops.start(start_runner)
        https = TlsListener(leaves.context_for, runner.server, other_loops=loops.targets())
        await dns.start(config.listen.dns)
        await https.start(config.listen.https)
        for endpoint in config.admin.listen:
            await bind_admin(admin, endpoint)
        background.append(spawn(health.run(), name="health"))
        background.append(spawn(evictor.run(), name="eviction"))
        background.append(spawn(_sample_savings(metrics), name="savings-history"))
        notify("READY=1\nSTATUS=serving")
        log.info(
            "regcache ready registries=%d intercepted=%d upstream_resolvers=%s",
            len(config.registries),
            len(intercepted.patterns()),
            ",".join(str(s) for s in resolver.servers) or "none",
        )
        await stop.wait()
        notify("STOPPING=1")
        log.info("regcache stopping reason=signal")
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        if https is not None:
            await https.close()
        await dns.close()
        await loops.close()
        await runner.cleanup()
        await admin.cleanup()
        if audit is not None:
            audit.close()
        await upstream.close()
        await index.close()
        log.info("regcache stopped")


def _https_loops(config: Config) -> int:
    return config.listen.https_loops or min(os.cpu_count() or 1, 8)


async def _sample_savings(metrics: Metrics) -> None:
    while True:
        await asyncio.sleep(60)
        metrics.savings.sample()


async def bind_admin(runner: web.AppRunner, endpoint: Endpoint) -> None:
    try:
        await web.TCPSite(runner, str(endpoint.address), endpoint.port).start()
    except OSError as e:
        raise StartupError(f"admin listener {endpoint}: {e.strerror or e}") from e


def run(config: Config, path: Path) -> None:
    try:
        asyncio.run(serve(config, path))
    except (CaError, OSError) as e:
        raise StartupError(str(e)) from e
