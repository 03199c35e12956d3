"""The local registry's parts (`local:`): its operations around the open index and the
store's files, who may use it, and the job that purges abandoned uploads."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from appliance.admin.metrics import Metrics
from appliance.cache.ports import BlobFiles, SpaceKeeper
from appliance.config.local import LocalConfig
from appliance.local.auth import LocalAccess
from appliance.local.registry import LocalRegistry
from appliance.local.uploads import LocalUploads
from appliance.store.index import SqliteIndex

_PURGE_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class Local:
    registry: LocalRegistry
    access: LocalAccess

    def purging(self) -> Callable[[], Coroutine[Any, Any, None]]:
        """The background job: abandoned uploads removed as they come of age."""
        uploads = self.registry.uploads
        every = min(_PURGE_EVERY_S, max(1.0, uploads.purge_after_s / 4))

        async def run() -> None:
            try:
                await self.registry.refresh()
                while True:
                    await asyncio.sleep(every)
                    uploads.purge()
            finally:
                uploads.close()

        return run


def build_local(
    config: LocalConfig,
    index: SqliteIndex,
    files: BlobFiles,
    space: SpaceKeeper,
    metrics: Metrics | None = None,
) -> Local | None:
    if not config.hosts:
        return None
    uploads = LocalUploads(files, purge_after_s=config.purge_uploads_after.seconds,
                           max_sessions=config.max_uploads, space=space)  # fmt: skip
    registry = LocalRegistry(index, files, uploads, config.hosts[0], space)
    if metrics is not None:
        metrics.watch_local(lambda: registry.usage, lambda: len(uploads))
    return Local(registry, LocalAccess(config))
