"""Composition root: builds every part from the config, runs them, shuts down cleanly."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import os
import resource
import signal
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from appliance.audit import AuditLog
from appliance.ca_policy import ensure_ca
from appliance.cache.access import AccessGate
from appliance.cache.fingerprint import Fingerprints
from appliance.cache.negative import NegativeCache
from appliance.cache.service import RegistryCache
from appliance.config import Config, ConfigError, Endpoint, StartupError, load_config
from appliance.dns.ratelimit import RateLimiter
from appliance.dns.responder import Interception, Responder
from appliance.dns.server import DnsServer, ServerLimits
from appliance.health import HealthMonitor, NamedCheck, listening
from appliance.metrics import Metrics
from appliance.notify import notify
from appliance.offline import OfflineSwitch
from appliance.outbound import credential_sources, upstream_client, upstream_resolver
from appliance.proxy.admin import create_admin_app
from appliance.proxy.app import Site, create_app, start_runner
from appliance.proxy.loops import Bridge, ServingLoops
from appliance.registries import Registries
from appliance.store.eviction import Eviction, Evictor
from appliance.store.files import FileBlobStore
from appliance.store.reconcile import open_index, reconcile
from appliance.tasks import spawn
from appliance.tls.ca import CaError, fingerprint, to_pem
from appliance.tls.leaves import LeafStore
from appliance.tls.listener import TlsListener

log = logging.getLogger(__name__)


def site_resolver(registries: Registries) -> Callable[[str], Site | None]:
    """Host → what the proxy needs to know of its registry (cached: asked per request)."""

    @functools.lru_cache(maxsize=4096)
    def site_for(host: str) -> Site | None:
        route = registries.route(host)
        if route is None:
            return None
        return Site(
            route.registry.tag_ttl_s,
            route.registry.max_stale_s,
            api=route.api,
            own_credentials=route.registry.credentials is not None,
            label=route.label,
        )

    return site_for


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
    registries = Registries.of(config)
    ca = ensure_ca(config, registries, now)
    intercepted = registries.intercepted
    resolver = upstream_resolver(config)
    metrics = Metrics(registries.label)
    config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    files = FileBlobStore(config.state_dir)
    health = HealthMonitor(
        [
            NamedCheck("https listener", lambda: listening(config.listen.https)),
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
            fail_open=registries.fail_open,
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
    upstream = upstream_client(
        config,
        registries,
        resolver,
        offline=offline_switch,
        credentials=credential_sources(registries),
        on_reply=metrics.upstream_reply,
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
        sites, write_audit = site_resolver(registries), audit.write if audit else None
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
