"""The local registry's parts (`local:`): its operations around the open index and the
store's files, who may use it, and the job that purges abandoned uploads."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from appliance.admin.metrics import Metrics
from appliance.cache.ports import BlobFiles, SpaceKeeper
from appliance.config.local import LocalConfig
from appliance.kit.logfields import fields
from appliance.local.auth import LocalAccess
from appliance.local.registry import LocalRegistry
from appliance.local.uploads import LocalUploads
from appliance.store import mirrorjournal
from appliance.store.index import SqliteIndex

_PURGE_EVERY_S = 60.0
_TICK_S = 1.0
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Local:
    registry: LocalRegistry
    access: LocalAccess
    journal: Callable[[], Awaitable[None]] | None = None
    """Saves the local registry's rows outside the index (`mirrorjournal.save_local`)."""

    def job(self) -> Callable[[], Coroutine[Any, Any, None]]:
        """The background job: within a second of a change, the figures read anew and
        the journal saved; abandoned uploads removed as they come of age, open ones
        closed at shutdown."""
        registry, uploads = self.registry, self.registry.uploads
        every = min(_PURGE_EVERY_S, max(1.0, uploads.purge_after_s / 4))

        async def run() -> None:
            counted, saved, purged = -1, -1, time.monotonic()
            try:
                while True:
                    if registry.changes != counted:
                        seen = registry.changes
                        try:
                            await registry.refresh()
                            counted = seen
                        except Exception as e:  # noqa: BLE001 - figures only: next tick
                            log.warning("local figures-not-read %s", fields(error=e))
                    if self.journal is not None and registry.changes != saved:
                        seen = registry.changes
                        try:
                            await self.journal()
                            saved = seen
                        except OSError as e:  # tried again next tick
                            log.warning("local journal-not-saved %s", fields(error=e))
                    if time.monotonic() - purged >= every:
                        uploads.purge()
                        purged = time.monotonic()
                    await asyncio.sleep(_TICK_S)
            finally:
                uploads.close()

        return run


def build_local(
    config: LocalConfig,
    index: SqliteIndex,
    files: BlobFiles,
    space: SpaceKeeper,
    metrics: Metrics | None = None,
    state_dir: Path | None = None,
) -> Local | None:
    """The local registry, if `local.hosts` names one; with `state_dir`, journalled there."""
    if not config.hosts:
        return None
    uploads = LocalUploads(files, purge_after_s=config.purge_uploads_after.seconds,
                           max_sessions=config.max_uploads, space=space)  # fmt: skip
    registry = LocalRegistry(index, files, uploads, config.hosts[0], space)
    if metrics is not None:
        metrics.watch_local(lambda: registry.usage, lambda: len(uploads))
    journal = None if state_dir is None else partial(mirrorjournal.save_local, state_dir, index)
    return Local(registry, LocalAccess(config), journal)
