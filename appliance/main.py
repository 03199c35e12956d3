"""Composition root: builds every part from the config, runs them, shuts down cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import gc
import logging
import os
import resource
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from appliance.admin.app import bind_admin, create_admin_app
from appliance.admin.audit import AuditLog
from appliance.admin.health import HealthMonitor, NamedCheck, listening
from appliance.admin.metrics import Metrics
from appliance.cache.access import AccessGate
from appliance.cache.fingerprint import Fingerprints
from appliance.cache.negative import NegativeCache
from appliance.cache.service import RegistryCache
from appliance.config.model import Config, StartupError
from appliance.config.registries import Registries
from appliance.dns.client import UpstreamResolver
from appliance.dns.server import DnsServer
from appliance.kit.tasks import Job, stop_spawned, supervise
from appliance.mirror.budget import Budgets
from appliance.mirror.scheduler import Mirror
from appliance.mirror.view import MirrorTags
from appliance.proxy.app import app_runner, create_app, start_runner
from appliance.proxy.loops import Bridge, ServingLoops
from appliance.proxy.outage import TokensGiven
from appliance.runtime.ca_policy import ensure_ca
from appliance.runtime.interception import dns_server
from appliance.runtime.local import build_local
from appliance.runtime.mirroring import build_mirror, feeding, mirror_section, mirror_view
from appliance.runtime.notify import notify
from appliance.runtime.offline import OfflineSwitch
from appliance.runtime.outbound import credential_sources, upstream_client, upstream_resolver
from appliance.runtime.peering import Sharing, open_peers, peer_addresses
from appliance.runtime.sharing import mirror_records, open_tier
from appliance.runtime.signals import on_reload, on_stop
from appliance.runtime.sites import mirror_front, site_resolver
from appliance.runtime.startup import StoreStartup
from appliance.store import mirrorjournal
from appliance.store.eviction import Eviction, Evictor
from appliance.store.files import FileBlobStore
from appliance.store.index import SqliteIndex
from appliance.store.reconcile import open_index
from appliance.tls.admission import Admission
from appliance.tls.ca import CaError, CertificateAuthority, fingerprint, to_pem
from appliance.tls.leaves import LeafStore
from appliance.tls.listener import TlsListener
from appliance.upstream.client import UpstreamClient

log = logging.getLogger(__name__)
_SPAWNED_GRACE_S = 2.0  # at shutdown, what background work gets to end before it is cancelled


@dataclass(frozen=True, slots=True)
class Parts:
    """Everything wired from the config alone. Nothing here holds a socket, thread or
    open file yet: `run` acquires those, each paired with its release."""

    config: Config
    path: Path
    """The config file SIGHUP re-reads."""
    registries: Registries
    ca: CertificateAuthority
    leaves: LeafStore
    resolver: UpstreamResolver
    metrics: Metrics
    files: FileBlobStore
    offline: OfflineSwitch
    admin_token: str | None
    mirror_view: MirrorTags
    budgets: Budgets
    """Rate-limit budgets as upstream's answers state them (the mirror's and clients')."""


@dataclass(frozen=True, slots=True)
class Acquired:
    """What `run` opens before the rest can be wired; each already has its release."""

    index: SqliteIndex
    upstream: UpstreamClient
    mirror_upstream: UpstreamClient
    """The managed mirror's own client: every configured credential, none lent."""
    audit: AuditLog | None
    sharing: Sharing
    """The blob tier shared with other gateways (`store.s3`) and the peers, if any."""


@dataclass(frozen=True, slots=True)
class Service:
    """The parts wired around the open index and upstream session (`wire`)."""

    proxy_app: Callable[[Bridge | None], web.Application]
    loops: ServingLoops
    dns: DnsServer
    admin_app: web.Application
    startup: StoreStartup
    """The store's reconciliation: the cache serves once it is done."""
    health: HealthMonitor
    mirror: Mirror
    background: dict[str, Job]
    """Run under `supervise` for as long as regcache serves."""


def build(config: Config, path: Path) -> Parts:
    """Wire the config-only parts (creating the CA on first start); StartupError naming
    the key when the config cannot work."""
    registries = Registries.of(config)
    ca = ensure_ca(config, registries, dt.datetime.now(dt.UTC))
    config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return Parts(
        config=config,
        path=path,
        registries=registries,
        ca=ca,
        leaves=LeafStore(
            ca, registries.intercepted, dt.timedelta(days=config.tls.leaf_lifetime_days)
        ),
        resolver=upstream_resolver(config),
        metrics=Metrics(registries.label),
        files=FileBlobStore(config.state_dir),
        offline=OfflineSwitch(config),
        admin_token=_admin_token(config),
        mirror_view=mirror_view(registries),
        budgets=Budgets(),
    )


async def run(parts: Parts) -> int:
    """Acquire every resource, each paired with its release at once; serve until SIGTERM
    or SIGINT; release in reverse. 0 after a signal, 1 when a background task ended."""
    async with contextlib.AsyncExitStack() as stack:
        stack.callback(log.info, "regcache stopped")
        stop = on_stop(stack)
        service = wire(parts, await _acquire(stack, parts))
        # Released after the listeners and servers, before the index and sessions.
        stack.push_async_callback(stop_spawned, _SPAWNED_GRACE_S)
        await service.mirror.reload()  # mirrored tags are served as such from the start
        # The store is reconciled in the background: after an index rebuild that re-hashes
        # every file, far longer than systemd waits for READY=1 (runtime/startup.py).
        service.startup.start()
        stack.push_async_callback(service.startup.stop)
        await service.startup.head_start()
        await _start(stack, parts, service)
        on_reload(stack, parts.path, parts.offline, service.dns.responder.flush)
        # What start-up made (config, CA, modules, wiring) lives as long as the process:
        # out of the collector's way, a full collection does not walk it again and again
        # and pause every loop while the first pulls arrive (bench: crowd time to first
        # byte).
        gc.collect()
        gc.freeze()
        notify(f"READY=1\nSTATUS={service.startup.status()}")
        log.info(
            "regcache ready registries=%d intercepted=%d upstream_resolvers=%s cache=%s",
            len(parts.config.registries),
            len(parts.registries.intercepted.patterns()),
            ",".join(str(s) for s in parts.resolver.servers) or "none",
            "ready" if service.startup.ready else "reconciling",
        )
        failed = await supervise(service.background, stop)
        notify("STOPPING=1")
        if failed is None:
            log.info("regcache stopping reason=signal")
        else:
            log.error("regcache stopping reason=task-failed task=%s", failed.name,
                      exc_info=failed.__cause__)  # fmt: skip
    return 0 if failed is None else 1


def serve(config: Config, path: Path) -> int:
    """`regcache serve`: its exit status; StartupError when regcache cannot start."""
    _raise_fd_limit()
    try:
        return asyncio.run(run(build(config, path)))
    except (CaError, OSError) as e:
        raise StartupError(str(e)) from e


async def _acquire(stack: contextlib.AsyncExitStack, parts: Parts) -> Acquired:
    """The index, the upstream session and the audit log, each with its release."""
    index, _ = await open_index(parts.config.state_dir)
    stack.push_async_callback(index.close)
    await mirrorjournal.restore(parts.config.state_dir, index)  # a rebuilt index: mirror, local
    upstream = upstream_client(
        parts.config,
        parts.registries,
        parts.resolver,
        offline=parts.offline,
        credentials=credential_sources(parts.registries),
        on_reply=feeding(parts.budgets, parts.metrics.upstream_reply),
    )
    stack.push_async_callback(upstream.close)
    mirror_upstream = upstream_client(
        parts.config, parts.registries, parts.resolver, offline=parts.offline,
        credentials=credential_sources(parts.registries, own=True),
        on_reply=feeding(parts.budgets, parts.metrics.upstream_reply),
    )  # fmt: skip
    stack.push_async_callback(mirror_upstream.close)
    audit = _audit_log(parts.config)
    if audit is not None:
        stack.callback(audit.close)
    tier = await open_tier(stack, parts.config, parts.metrics, parts.resolver.resolve)
    peers = open_peers(stack, parts.config, parts.ca, parts.metrics, parts.offline)
    return Acquired(index, upstream, mirror_upstream, audit, Sharing(tier, peers))


async def _start(stack: contextlib.AsyncExitStack, parts: Parts, service: Service) -> None:
    """Start the servers and listeners. Each release is registered before its start
    where a start can fail half way (several loops or endpoints)."""
    config = parts.config
    runner = await start_runner(service.proxy_app(None))
    admin = app_runner(service.admin_app)
    # All runners at once (each may wait out requests in flight); admin's sites, bound
    # below, with it.
    stack.push_async_callback(service.loops.close, runner, admin)
    await admin.setup()
    await service.loops.start(start_runner)
    assert runner.server is not None
    https = TlsListener(
        parts.leaves.context,
        runner.server,
        other_loops=service.loops.targets(),
        admission=Admission.configured(config.tls),
    )
    stack.push_async_callback(service.dns.close)
    await service.dns.start(config.listen.dns)
    stack.push_async_callback(https.close)
    await https.start(config.listen.https + config.mirror_mode.listen)
    service.health.watch(NamedCheck("https front door", https.stalled))
    for endpoint in config.admin.listen:
        await bind_admin(admin, endpoint)


def wire(parts: Parts, acquired: Acquired) -> Service:
    """The parts that need the open index and upstream session; wiring only."""
    cache, evictor = _cache(parts, acquired)
    write_audit = acquired.audit.write if acquired.audit else None
    startup = StoreStartup(acquired.index, parts.files)
    tokens = TokensGiven()  # one for every serving loop
    config = parts.config
    local = build_local(config.local, acquired.index, parts.files, evictor, parts.metrics,
                        config.state_dir)  # fmt: skip
    served = None if local is None else (local.registry, local.access)

    def proxy_app(bridge: Bridge | None) -> web.Application:
        sites = site_resolver(parts.registries)  # one cache per serving loop
        front = mirror_front(config.mirror_mode, parts.registries, sites)
        return create_app(cache, acquired.upstream, sites, parts.metrics, write_audit, bridge,
                          caching=lambda: startup.ready, tokens=tokens, local=served,
                          peers=peer_addresses(config), mirror=front)  # fmt: skip

    loops = ServingLoops(_https_loops(config) - 1, proxy_app)
    health = HealthMonitor(
        [
            NamedCheck("https listener", lambda: listening(config.listen.https)),
            NamedCheck("store", lambda: asyncio.to_thread(parts.files.check_writable)),
            NamedCheck("https loops", loops.stalled),
        ]
    )
    dns = dns_server(parts.config, parts.registries, parts.resolver, parts.metrics,
                     lambda: startup.ready and health.healthy)  # fmt: skip

    async def ready() -> list[str]:
        problems = [] if dns.listening else ["dns listener: not listening"]
        problems += [p] if (p := startup.problem()) else []
        return problems + list(await health.check_once())

    records = mirror_records(acquired.sharing.tier, acquired.index, config)
    mirror = build_mirror(parts.config, parts.registries, acquired.index, cache,
                          acquired.mirror_upstream, parts.mirror_view, parts.budgets,
                          write_audit, parts.metrics, records)  # fmt: skip
    admin_app = _admin_app(parts, ready, mirror, acquired.sharing)
    evictor.busy = lambda: cache.filling() | mirror.holding()
    background: dict[str, Job] = {
        "health": health.run,
        "store": functools.partial(startup.run, evictor.run),  # reconcile, then evict
        "savings-history": functools.partial(_sample_savings, parts.metrics),
        "mirror": functools.partial(startup.when_ready, mirror.run),
        **({"local": local.job()} if local else {}),
        **acquired.sharing.jobs(
            config,
            acquired.index,
            records,
            parts.files,
            None if local is None else local.registry,
            startup.when_ready,
        ),
    }
    return Service(proxy_app, loops, dns, admin_app, startup, health, mirror, background)


def _admin_app(
    parts: Parts, ready: Callable[[], Awaitable[list[str]]], mirror: Mirror, sharing: Sharing
) -> web.Application:
    return create_admin_app(
        parts.metrics,
        ready,
        parts.config.admin.allow_clients,
        parts.admin_token,
        ca_pem=lambda: to_pem(parts.ca.trust_bundle(dt.datetime.now(dt.UTC))),
        ca_fingerprint=lambda: fingerprint(parts.ca.cert),
        sections=lambda: mirror_section(mirror, parts.budgets) + sharing.section(),
        degraded=sharing.degraded,
    )


def _cache(parts: Parts, acquired: Acquired) -> tuple[RegistryCache, Evictor]:
    config, metrics, files = parts.config, parts.metrics, parts.files
    index, upstream = acquired.index, acquired.upstream
    gate = AccessGate(
        upstream,
        index,
        files,
        fingerprints=Fingerprints.for_install(config.state_dir),
        verified_ttl_s=config.access.verified_ttl_s,
        public_ttl_s=config.access.public_ttl_s,
        outage_grace_s=config.access.outage_grace_s,
        offline=parts.offline,
        mirror=parts.mirror_view,
    )
    evictor = Evictor(
        index, files, config.store, on_evicted=functools.partial(_count_eviction, metrics)
    )
    cache = RegistryCache(
        files,
        index,
        upstream,
        gate,
        NegativeCache(config.upstream.negative_ttl_s),
        max_fills=config.upstream.max_fills,
        space=evictor,
        on_fill_finished=lambda state, s: metrics.fill_seconds.labels(state).observe(s),
        mirror=parts.mirror_view,
        shared=acquired.sharing.tier,
        peers=acquired.sharing.peers,
    )
    metrics.watch(lambda: evictor.stored, config.state_dir, lambda: cache.coalesced)
    return cache, evictor


def _admin_token(config: Config) -> str | None:
    """Read once at start; a missing file or variable is a StartupError naming it."""
    ref = config.admin.token
    if ref is None:
        return None
    try:
        return ref.read()
    except OSError as e:
        where = ref.file or f"${ref.env}"
        raise StartupError(f"admin.token {where}: cannot read: {e.strerror or e}") from e


def _audit_log(config: Config) -> AuditLog | None:
    if not config.audit.enabled:
        return None
    path = config.audit_path()
    try:
        return AuditLog(path, config.audit.max_bytes.bytes, config.audit.keep)
    except OSError as e:  # raised before its writer thread starts
        raise StartupError(f"audit.path {path}: cannot open: {e}") from e


def _raise_fd_limit() -> None:
    """Up to the hard limit (systemd's LimitNOFILE sets both; a sandbox may forbid it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError) as e:
            log.warning("fd-limit unchanged soft=%d hard=%d error=%s", soft, hard, e)


def _https_loops(config: Config) -> int:
    return config.listen.https_loops or min(os.cpu_count() or 1, 8)


def _count_eviction(metrics: Metrics, eviction: Eviction) -> None:
    metrics.evicted_rows.inc(eviction.rows)
    metrics.evicted_bytes.inc(eviction.bytes)


async def _sample_savings(metrics: Metrics) -> None:
    while True:
        await asyncio.sleep(60)
        metrics.savings.sample()
