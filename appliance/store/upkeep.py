"""Upkeep of the shared tier (issue #19): each gateway publishes what it holds, and one
gateway at a time (a lease) evicts from the bucket by age and size.

Reference-aware: every gateway writes `holds/<gateway>`, the digests its store keeps
whole (mirrored and pinned images with everything they reference, the local registry),
and no blob any of them holds is evicted. Holds not refreshed for `_HOLD_TTL_S` belong
to a gateway that is gone and no longer count. Blobs younger than `_MIN_AGE_S` are never
chosen: a gateway may have just filled one it is about to hold. Otherwise the policy is
by age (`max_age`: blobs shared longer ago go) and then size (`max_size`: the oldest go
until the rest fits). S3 keeps no access time, so "oldest" is "shared longest ago"; each
gateway's own disk stays the LRU tier for what its builds use. A listing holds at most a
million blobs (`BlobTier.blobs`): past that, a pass weighs the first million by name."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from appliance.kit.logfields import fields
from appliance.store.lease import Lease
from appliance.store.s3 import Bucket, Listed

log = logging.getLogger(__name__)

HOLDS = "holds/"
_HOLD_TTL_S = 7 * 86400.0
_MIN_AGE_S = 3600.0
_UPKEEP_LEASE = "leases/upkeep"


@dataclass(frozen=True, slots=True)
class Policy:
    max_bytes: int | None
    max_age_s: float | None


@dataclass(frozen=True, slots=True)
class Evicted:
    objects: int
    bytes: int
    kept_held: int
    """Blobs the policy would have chosen but a gateway holds."""
    names: frozenset[str] = frozenset()
    """What was removed."""


async def publish_holds(bucket: Bucket, gateway: str, digests: Iterable[str]) -> None:
    """What this gateway's store keeps whole, for whoever evicts from the bucket."""
    body = json.dumps({"gateway": gateway, "digests": sorted(digests)}).encode()
    await bucket.put(HOLDS + gateway, body)


async def held(bucket: Bucket, now_s: float) -> set[str]:
    """Every live gateway's holds, as `sha256:<hex>` digests."""
    digests: set[str] = set()
    async for item in bucket.listing(HOLDS):
        if now_s - item.modified_s > _HOLD_TTL_S:
            continue  # a gateway that is gone
        body = await bucket.get(item.name)
        if body is None:
            continue
        try:
            digests.update(json.loads(await body.read())["digests"])
        except (ValueError, KeyError, TypeError) as e:
            log.warning("tier holds-unreadable %s", fields(name=item.name, error=e))
        finally:
            body.close()
    return digests


def choose(blobs: list[Listed], holds: set[str], policy: Policy, now_s: float) -> list[Listed]:
    """The blobs to evict, oldest first."""
    total = sum(b.size for b in blobs)
    chosen: list[Listed] = []
    for blob in sorted(blobs, key=lambda b: b.modified_s):
        age = now_s - blob.modified_s
        digest = _digest(blob.name)
        if age < _MIN_AGE_S or digest is None or digest in holds:
            continue
        too_old = policy.max_age_s is not None and age > policy.max_age_s
        too_big = policy.max_bytes is not None and total > policy.max_bytes
        if not (too_old or too_big):
            break  # the rest is younger, and what is left fits
        chosen.append(blob)
        total -= blob.size
    return chosen


async def evict(
    bucket: Bucket,
    gateway: str,
    policy: Policy,
    lease_s: float,
    blobs: Sequence[Listed] | None = None,
) -> Evicted | None:
    """One eviction pass, unless another gateway runs one now (None). `blobs`: the
    bucket's blobs as a listing just found them (default: listed here)."""
    lease = Lease(bucket, _UPKEEP_LEASE, lease_s, gateway)
    if not await lease.take():
        return None
    try:
        now = time.time()
        holds = await held(bucket, now)
        if blobs is None:
            blobs = [item async for item in bucket.listing("blobs/")]
        chosen = choose(list(blobs), holds, policy, now)
        for blob in chosen:
            await bucket.delete(blob.name)
        spared = sum(1 for b in blobs if _digest(b.name) in holds)
        result = Evicted(len(chosen), sum(b.size for b in chosen), spared,
                         frozenset(b.name for b in chosen))  # fmt: skip
        if chosen:
            log.info("tier evicted %s", fields(objects=result.objects, bytes=result.bytes,
                                               held=spared))  # fmt: skip
        return result
    finally:
        await lease.release()


def _digest(name: str) -> str | None:
    """`blobs/sha256/<hex>` → `sha256:<hex>`; None for a name regcache did not write."""
    parts = name.split("/")
    return f"{parts[1]}:{parts[2]}" if len(parts) == 3 and parts[1] and parts[2] else None
