"""The shared blob tier (`store.s3`) opened for `regcache serve`: the bucket's client,
the tier over it, and what `/readyz` says of it."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

from yarl import URL

from appliance.admin import tierpage
from appliance.admin.metrics import Metrics
from appliance.admin.tierpage import TierState
from appliance.cache.ports import BlobFiles
from appliance.config.hostnames import HostSet
from appliance.config.model import Config, IPAddress, StartupError
from appliance.kit.findings import Finding
from appliance.kit.logfields import fields
from appliance.kit.logthrottle import LogThrottle
from appliance.kit.tasks import Job
from appliance.kit.units import human_size
from appliance.local.registry import LocalRegistry
from appliance.mirror.records import MirrorRecords
from appliance.runtime.outbound import upstream_resolver
from appliance.store.eviction import protected_digests
from appliance.store.index import SqliteIndex
from appliance.store.s3 import Bucket, BucketRefused, BucketUnavailable, Conflict
from appliance.store.sharedlocal import SharedLocal
from appliance.store.sharedmirror import SharedMirror
from appliance.store.tier import BlobTier
from appliance.store.upkeep import Evicted, Policy, evict, publish_holds
from appliance.upstream.client import OwnResolver
from appliance.upstream.targets import TargetPolicy

log = logging.getLogger(__name__)
_converge_log = LogThrottle(log, interval_s=60.0)
_CONVERGE_S = 5.0  # how soon a gateway serves a tag another gateway moved
_FIRST_UPKEEP_S, _UPKEEP_S = 10.0, 600.0  # holds, eviction, survey: LIST walks
PENDING_NAME = "local-share-pending.json"
"""Deletes in the local registry not yet written to the bucket, kept across restarts."""


async def open_tier(
    stack: contextlib.AsyncExitStack,
    config: Config,
    metrics: Metrics,
    resolve: Callable[[str], Awaitable[tuple[IPAddress, ...]]],
) -> BlobTier | None:
    """The tier, its client closed with `stack`; None when none is configured. A bucket
    that does not answer now is not a reason to refuse to start: pulls go upstream
    unshared meanwhile, and `/readyz` says so."""
    s3 = config.store.s3
    if s3 is None:
        return None
    bucket = Bucket(s3, _own_resolver(config, resolve))
    await _enter(stack, bucket)
    gateway = f"{socket.gethostname()}@{config.appliance.ipv4}"  # named in leases
    redirect_s = None if s3.redirect is None else int(s3.redirect.seconds)
    tier = BlobTier(bucket, gateway, part_bytes=s3.part_size.bytes, lease_s=s3.lease.seconds,
                    redirect_s=redirect_s)  # fmt: skip
    metrics.watch_tier(tier.counts.figures, lambda: tier.counts.failures)
    problem = await tier.probe()
    log.info("tier %s", fields(endpoint=s3.endpoint, bucket=s3.bucket,
                              state="reachable" if problem is None else "unreachable"))  # fmt: skip
    return tier


async def degraded(tier: BlobTier | None, also: list[str]) -> list[str]:
    """What works less well than it should, though regcache serves (empty: nothing):
    the tier's trouble, and `also` (peers down)."""
    if tier is None:
        return also
    problem = tier.problem() or await tier.probe()
    return also if problem is None else [f"shared tier (bucket {tier.bucket}): {problem}", *also]


@contextlib.asynccontextmanager
async def shared_records(config: Config, index: SqliteIndex) -> AsyncIterator[MirrorRecords]:
    """For `regcache mirror`: the index's rows, their tags shared through the bucket
    when there is one (so a pin made here reaches every gateway)."""
    s3 = config.store.s3
    if s3 is None:
        yield index
        return
    bucket = Bucket(s3, _own_resolver(config, upstream_resolver(config).resolve))
    async with contextlib.AsyncExitStack() as stack:
        await _enter(stack, bucket)
        yield SharedMirror(index, bucket, keep_backups=config.mirror.defaults.keep_backups)


def mirror_records(tier: BlobTier | None, index: SqliteIndex, config: Config) -> MirrorRecords:
    """The managed mirror's rows: the index's, its tags shared through the bucket when
    there is one."""
    if tier is None:
        return index
    return SharedMirror(index, tier.objects, keep_backups=config.mirror.defaults.keep_backups)


async def _enter(stack: contextlib.AsyncExitStack, bucket: Bucket) -> None:
    try:
        await stack.enter_async_context(bucket.open())
    except OSError as e:
        raise StartupError(f"store.s3.credentials: cannot read: {e}") from e


def _own_resolver(
    config: Config, resolve: Callable[[str], Awaitable[tuple[IPAddress, ...]]]
) -> OwnResolver:
    """regcache's own resolver for the endpoint's name; the endpoint the operator named
    may be on the LAN (unlike a place a registry sends regcache to)."""
    assert config.store.s3 is not None
    host = URL(config.store.s3.endpoint).host or ""
    return OwnResolver(resolve, TargetPolicy(HostSet(frozenset({host}), ()),
                                             frozenset(config.resolve)))  # fmt: skip


def sharing_jobs(
    config: Config,
    index: SqliteIndex,
    records: MirrorRecords,
    tier: BlobTier | None,
    local: tuple[LocalRegistry, BlobFiles] | None = None,
    when_ready: Callable[[Job], Awaitable[None]] | None = None,
) -> dict[str, Job]:
    """Background work that sharing adds: other gateways' mirror moves applied here, the
    local registry shared (its replica attached to `local`'s registry; the job waits
    for `when_ready`, as it commits into the store), and the bucket's upkeep
    (`upkeep_once`) now and then."""
    jobs: dict[str, Job] = {}
    if isinstance(records, SharedMirror):
        jobs["mirror-share"] = functools.partial(_converging, records)
    if tier is not None:
        jobs["tier-upkeep"] = functools.partial(_upkeeping, config, index, tier)
    if tier is not None and local is not None:
        registry, files = local
        assert config.store.s3 is not None
        shared = SharedLocal(index, files, tier.objects, tier.gateway, source=registry.name,
                             part_bytes=config.store.s3.part_size.bytes,
                             pending=config.state_dir / PENDING_NAME)  # fmt: skip
        registry.replica = shared
        job: Job = functools.partial(_sharing_local, shared, registry)
        jobs["local-share"] = job if when_ready is None else functools.partial(when_ready, job)
    return jobs


async def upkeep_once(config: Config, index: SqliteIndex, tier: BlobTier) -> Evicted | None:
    """Publish what this gateway holds, evict by the bucket's policy (if it has one, and
    no other gateway is at it), then count what the bucket holds (the status page)."""
    s3 = config.store.s3
    assert s3 is not None
    kept = protected_digests(await index.snapshot(), set())
    await publish_holds(tier.objects, tier.gateway, kept)
    blobs, complete = await tier.blobs()  # one LIST walk for the eviction and the count
    evicted = None
    if s3.max_size is not None or s3.max_age is not None:
        policy = Policy(s3.max_size.bytes if s3.max_size else None,
                        s3.max_age.seconds if s3.max_age else None)  # fmt: skip
        evicted = await evict(tier.objects, tier.gateway, policy, s3.lease.seconds, blobs)
    if evicted is not None:
        blobs = [item for item in blobs if item.name not in evicted.names]
    await tier.survey((blobs, complete))
    return evicted


def tier_section(tier: BlobTier | None) -> str:
    """The status page's section on the shared tier ("" without one)."""
    if tier is None:
        return ""
    survey = tier.last_survey
    held = None if survey is None else (survey.objects, survey.bytes, survey.complete,
                                        survey.leases, survey.at_s)  # fmt: skip
    config = tier.objects.config
    return tierpage.render(TierState(config.endpoint, tier.bucket, tier.problem(),
                                     tier.counts.figures(), held))  # fmt: skip


async def _upkeeping(config: Config, index: SqliteIndex, tier: BlobTier) -> None:
    await asyncio.sleep(_FIRST_UPKEEP_S)
    while True:
        try:
            await upkeep_once(config, index, tier)
        except (BucketUnavailable, BucketRefused) as e:
            tier.note_trouble("upkeep", e)
        await asyncio.sleep(_UPKEEP_S)


async def _sharing_local(shared: SharedLocal, registry: LocalRegistry) -> None:
    """Converge every few seconds, and at once after a push or delete here."""
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(shared.nudged.wait(), _CONVERGE_S)
        shared.nudged.clear()
        try:
            done = await shared.converge()
        except (BucketUnavailable, BucketRefused) as e:
            _converge_log.warning("local", "local share-converge-failed error=%s", e)
            continue
        except Exception as e:  # a full disk, a bad record: never regcache's end; next time
            log.error("local share-converge-error %s", fields(error=repr(e)), exc_info=True)
            continue
        if done:
            registry.changes += 1  # figures and journal anew
            log.info("local share-converged %s", fields(published=done.published,
                     imported=done.imported, deleted=done.deleted))  # fmt: skip


async def _converging(records: SharedMirror) -> None:
    while True:
        await asyncio.sleep(_CONVERGE_S)
        try:
            applied = await records.converge()
        except (BucketUnavailable, BucketRefused) as e:
            _converge_log.warning("converge", "mirror share-converge-failed error=%s", e)
            continue
        if applied:
            log.info("mirror share-converged %s", fields(tags=applied))


_CONDITIONAL_FIX = (
    "use an S3 engine that honours If-None-Match and If-Match on PUT (AWS S3 does, as do"
    " current MinIO, SeaweedFS and Ceph RGW releases): without them two gateways can"
    " overwrite each other's mirror tags"
)


async def examine(config: Config) -> list[Finding]:
    """What `regcache doctor` says of the shared tier, on the gateway: the bucket answers,
    takes writes and honours conditional ones, and what it holds."""
    s3 = config.store.s3
    if s3 is None:
        return []
    bucket = Bucket(s3, _own_resolver(config, upstream_resolver(config).resolve))
    async with contextlib.AsyncExitStack() as stack:
        await _enter(stack, bucket)
        try:
            await bucket.check()
        except (BucketUnavailable, BucketRefused) as e:
            fix = ("create the bucket, or let these credentials list it (s3:ListBucket)"
                   if isinstance(e, BucketRefused) else
                   "check store.s3.endpoint and the gateway's route to it")  # fmt: skip
            return [Finding(f"s3 bucket {s3.bucket}", False, str(e), fix)]
        found = [Finding(f"s3 bucket {s3.bucket}", True, f"answers at {s3.endpoint}")]
        try:
            honoured = await _conditional_writes(bucket)
            survey = await BlobTier(bucket, "doctor", part_bytes=s3.part_size.bytes,
                                    lease_s=s3.lease.seconds).survey()  # fmt: skip
        except (BucketUnavailable, BucketRefused) as e:
            fix = "let these credentials put, get and delete objects (s3:PutObject…)"
            return [*found, Finding("s3 writes", False, str(e), fix)]
        found.append(Finding("s3 conditional writes", honoured,
                             "If-None-Match and If-Match honoured" if honoured else
                             "a conditional PUT that had to fail was taken",
                             "" if honoured else _CONDITIONAL_FIX))  # fmt: skip
        held = f"{'' if survey.complete else 'at least '}{survey.objects} blobs"
        found.append(Finding("s3 holds", True, f"{held}, {human_size(survey.bytes)};"
                                               f" {survey.leases} fills leading now"))  # fmt: skip
        return found


async def _conditional_writes(bucket: Bucket) -> bool:
    """Whether both kinds of conditional PUT that must fail do (a probe object, removed)."""
    probe = f"doctor/{socket.gethostname()}"
    await bucket.put(probe, b"probe")
    refused = 0
    for condition in ({"if_absent": True}, {"if_match": '"not-its-etag"'}):
        try:
            await bucket.put(probe, b"overwritten", **condition)
        except Conflict:
            refused += 1
    await bucket.delete(probe)
    return refused == 2
