"""What the store holds, as answers: a `Stored` only for a digest whose file is whole,
and the index writes an answer does not depend on."""

from __future__ import annotations

import logging
from collections.abc import Awaitable

from appliance.cache.answers import Stored
from appliance.cache.fill import Fill
from appliance.cache.ports import BlobFiles, BlobRow, Index, SpaceKeeper
from appliance.kit.logthrottle import LogThrottle
from appliance.oci.digest import Digest

log = logging.getLogger(__name__)


class Shelf:
    def __init__(self, files: BlobFiles, index: Index, space: SpaceKeeper | None) -> None:
        self._files = files
        self._index = index
        self._space = space
        self._full_log = LogThrottle(log, interval_s=60.0)

    async def stored(self, digest: Digest, default_type: str) -> Stored | None:
        return self.stored_now(digest, await self._index.blob(digest), default_type)

    async def stored_manifest(self, digest: Digest) -> Stored | None:
        media_type = await self._index.manifest_type(digest)
        return None if media_type is None else await self.stored(digest, media_type)

    def stored_now(self, digest: Digest, row: BlobRow | None, default_type: str) -> Stored | None:
        """`row`'s file as an answer if it is all there (no I/O but a stat)."""
        if row is None or self._files.size_of(digest) != row.size:
            return None
        return Stored(
            digest, row.size, row.media_type or default_type, self._files.path_for(digest)
        )

    def added(self, size: int) -> None:
        if self._space is not None:
            self._space.nudge(added=size)

    def disk_full(self, fill: Fill | None, error: OSError) -> None:
        """A write found no space: serve without keeping, log once a minute, make room."""
        self._full_log.warning(
            "disk-full",
            "store disk-full digest=%s error=%s action=streaming-through-uncached",
            fill.digest if fill is not None else "-",
            error.strerror or error,
        )
        if self._space is not None:
            self._space.nudge(urgent=True)

    async def record(self, what: str, write: Awaitable[None]) -> None:
        """An index write the answer does not depend on: if it fails (a full disk), the
        client is served anyway and the failure logged. A tag not recorded is revalidated
        next time; a manifest not indexed is fetched again."""
        try:
            await write
        except Exception as e:  # noqa: BLE001 - whatever the index adapter raised
            self._full_log.warning("index", "index write-failed what=%s error=%s", what, e)
