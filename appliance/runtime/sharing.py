"""The shared blob tier (`store.s3`) opened for `regcache serve`: the bucket's client,
the tier over it, and what `/readyz` says of it."""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable

from yarl import URL

from appliance.admin.metrics import Metrics
from appliance.config.hostnames import HostSet
from appliance.config.model import Config, IPAddress, StartupError
from appliance.kit.logfields import fields
from appliance.store.s3 import Bucket
from appliance.store.tier import BlobTier
from appliance.upstream.client import OwnResolver
from appliance.upstream.targets import TargetPolicy

log = logging.getLogger(__name__)


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
    endpoint_host = URL(s3.endpoint).host or ""
    # The endpoint the operator named may be on the LAN (unlike where a registry sends us).
    trusted = TargetPolicy(HostSet(frozenset({endpoint_host}), ()), frozenset(config.resolve))
    bucket = Bucket(s3, OwnResolver(resolve, trusted))
    try:
        await stack.enter_async_context(bucket.open())
    except OSError as e:
        raise StartupError(f"store.s3.credentials: cannot read: {e}") from e
    gateway = f"{socket.gethostname()}@{config.appliance.ipv4}"  # named in leases
    tier = BlobTier(bucket, gateway, part_bytes=s3.part_size.bytes, lease_s=s3.lease.seconds)
    metrics.watch_tier(tier.counts.figures, lambda: tier.counts.failures)
    problem = await tier.probe()
    log.info("tier %s", fields(endpoint=s3.endpoint, bucket=s3.bucket,
                              state="reachable" if problem is None else "unreachable"))  # fmt: skip
    return tier


async def degraded(tier: BlobTier | None) -> list[str]:
    """What works less well than it should, though regcache serves (empty: nothing)."""
    if tier is None:
        return []
    problem = tier.problem() or await tier.probe()
    return [] if problem is None else [f"shared tier (bucket {tier.bucket}): {problem}"]
