"""A lease object in the bucket: which gateway does a thing (fills a blob, evicts) while
it renews it; another takes it over once it has lapsed by the endpoint's own clock."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

from appliance.kit.logfields import fields
from appliance.kit.logthrottle import LogThrottle
from appliance.kit.tasks import spawn
from appliance.store.s3 import Bucket, BucketRefused, BucketUnavailable, Conflict

log = logging.getLogger(__name__)
_renew_log = LogThrottle(log, interval_s=60.0)
_Trouble = (BucketUnavailable, BucketRefused)


class Lease:
    """A lease object: which gateway does what it names (fills a blob, evicts), renewed
    while it does."""

    def __init__(self, bucket: Bucket, name: str, lease_s: float, gateway: str) -> None:
        self._bucket = bucket
        self._name = name
        self._lease_s = lease_s
        self._body = json.dumps({"gateway": gateway}).encode()
        self._etag: str | None = None
        self._renewing: asyncio.Task[None] | None = None
        self.holder = "?"
        self.taken_over = 0

    async def take(self) -> bool:
        """Held now (new, or taken over from a lapsed holder); False while another holds it."""
        try:
            self._etag = await self._bucket.put(self._name, self._body, if_absent=True)
        except Conflict:
            info = await self._bucket.head(self._name)
            if info is None or info.age_s <= self._lease_s:
                self.holder = await self._holder()
                return False
            try:  # lapsed: its holder stopped renewing
                self._etag = await self._bucket.put(self._name, self._body, if_match=info.etag)
            except Conflict:
                return False  # another gateway took it over first
            self.taken_over = 1
        self._renewing = spawn(self._renew(), name=f"lease {self._name}")
        return True

    async def _holder(self) -> str:
        with contextlib.suppress(*_Trouble, ValueError):
            body = await self._bucket.get(self._name)
            if body is not None:
                try:
                    return str(json.loads(await body.read()).get("gateway", "?"))
                finally:
                    body.close()
        return "?"

    async def _renew(self) -> None:
        while self._etag is not None:
            await asyncio.sleep(self._lease_s / 3)
            try:
                self._etag = await self._bucket.put(self._name, self._body, if_match=self._etag)
            except Conflict:
                log.warning("tier lease-lost %s", fields(lease=self._name))
                self._etag = None
            except _Trouble as e:  # it may lapse; the upload's If-None-Match guards
                _renew_log.warning("renew", "tier lease-renew-failed error=%s", e)

    async def release(self) -> None:
        if self._renewing is not None:
            self._renewing.cancel()
        if self._etag is None:
            return
        self._etag = None
        with contextlib.suppress(*_Trouble):
            await self._bucket.delete(self._name)
