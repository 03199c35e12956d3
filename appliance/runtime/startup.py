"""The store's start-up reconciliation, in the background while regcache already serves.

After an index rebuild every blob file is re-hashed, which on a large store takes far
longer than systemd's start timeout: DNS and HTTPS must not wait for it. So the listeners
open first, and until the store agrees with its index:

- HTTPS passes manifest and blob requests through to upstream uncached (the proxy asks
  `ready`): no hit trusts an index that may lack rows, no fill commits beside the walk,
  no access verdict reads it;
- DNS fails open for the registries that do (their clients go to the real registry);
- eviction does not run (`run` starts it once done): it would plan over an index that
  does not count every file;
- `/readyz` and the status page say why they are not ready (`problem`), the log and
  systemd's STATUS= how far it has come, at most every `report_every_s`.

A reconciliation that fails as a whole (the index refuses writes: "database or disk is
full") does not stop regcache: it goes on serving as above, says why (an ERROR in the
log, `/readyz`, the status page, STATUS=) and tries again after `retry_s`, doubling up
to `max_retry_s`. Exiting instead would have systemd restart it until its start limit
and then leave the build network without DNS. (A file that cannot be read is no such
failure: reconciliation skips it, store/reconcile.py.)

A store quick to reconcile (an intact index) is given `head_start` before the listeners
open, so an ordinary restart serves cached at once rather than failing open for a
moment: clients would keep the real registry's addresses for their DNS TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from appliance.kit.logfields import fields
from appliance.kit.tasks import Job
from appliance.runtime.notify import notify
from appliance.store.files import FileBlobStore
from appliance.store.index import SqliteIndex
from appliance.store.reconcile import Progress, Reconciliation, reconcile

log = logging.getLogger(__name__)

HEAD_START_S = 2.0
"""How long start-up waits for reconciliation before opening the listeners anyway."""
REPORT_EVERY_S = 10.0
RETRY_S = 60.0
"""How long after a failed reconciliation the next one starts (doubling each time)."""
MAX_RETRY_S = 600.0


class StoreStartup:
    """Reconciles the store until it succeeds (`start`), then lets the cache serve
    (`ready`)."""

    def __init__(
        self,
        index: SqliteIndex,
        files: FileBlobStore,
        report_every_s: float = REPORT_EVERY_S,
        retry_s: float = RETRY_S,
        max_retry_s: float = MAX_RETRY_S,
    ) -> None:
        self._index = index
        self._files = files
        self._report_every_s = report_every_s
        self._retry_s = (retry_s, max_retry_s)
        self.progress = Progress()
        self.ready = False
        """Whether the cache may serve: read from every serving loop's thread."""
        self.failure: str | None = None
        """Why the last reconciliation failed, until one succeeds."""
        self._retry_at: float | None = None
        """When the next one starts (monotonic), while waiting for it."""
        self._task: asyncio.Task[Reconciliation] | None = None
        self._opened = asyncio.Event()

    def start(self) -> None:
        """Begin reconciling (a task of its own, so the listeners can open beside it)."""
        coro = self._reconcile_until_done()
        self._task = asyncio.get_running_loop().create_task(coro, name="store-reconcile")

    async def head_start(self, seconds: float = HEAD_START_S) -> None:
        """Wait up to `seconds` for reconciliation; ready at once if it finished."""
        assert self._task is not None
        await asyncio.wait([self._task], timeout=seconds)
        if self._task.done():
            self._open(self._task.result())

    def status(self) -> str:
        """systemd's STATUS= line."""
        if self.ready:
            return "serving"
        if self._retry_at is not None:
            return f"store reconcile failed, retrying, passing through uncached: {self.failure}"
        return f"reconciling the store, passing through uncached: {self.progress.fields()}"

    def problem(self) -> str | None:
        """Why regcache is not ready yet (`/readyz`, the status page), None once it is."""
        if self.ready:
            return None
        until = "until done, manifests and blobs pass through uncached"
        if self._retry_at is not None:
            wait = max(0.0, self._retry_at - time.monotonic())
            return f"store: reconcile failed ({self.failure}), retrying in {wait:.0f} s; {until}"
        again = f" (the last attempt failed: {self.failure})" if self.failure else ""
        return f"store: reconciling {self.progress.fields()}{again}; {until}"

    async def run(self, then: Job) -> None:
        """The supervised job: wait for reconciliation (reporting its progress, retrying
        it after a failure), let the cache serve, then run `then` (eviction) for as long as
        regcache serves."""
        assert self._task is not None
        if not self.ready:
            reporter = asyncio.get_running_loop().create_task(self._report())
            try:
                report = await self._task
            finally:
                reporter.cancel()
            self._open(report)
            notify(f"STATUS={self.status()}")
        await then()

    async def stop(self) -> None:
        """Cancel a reconciliation still running (regcache stops before it is done): its
        steps are atomic, the next start goes on from where it got."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task  # it ends only reconciled or cancelled

    async def _reconcile_until_done(self) -> Reconciliation:
        """Reconcile; after a failure, say why and try again later (see the module's
        docstring). Every attempt removes fill temp files (`at_start`): the cache has not
        served yet, so no fill is in flight. A stop (cancellation) ends it."""
        delay, longest = self._retry_s
        while True:
            try:
                return await reconcile(
                    self._index, self._files, at_start=True, progress=self.progress
                )
            except Exception as e:  # regcache serves on uncached; retried (a stop is no Exception)
                self.failure = f"{type(e).__name__}: {e}"[:300]
                log.error(
                    "store reconcile-failed %s",
                    fields(error=self.failure, retry_in_s=f"{delay:g}",
                           action="passing-through-uncached"),
                    exc_info=e,
                )  # fmt: skip
            self._retry_at = time.monotonic() + delay
            notify(f"STATUS={self.status()}")
            try:
                await asyncio.sleep(delay)
            finally:
                self._retry_at = None
            delay = min(delay * 2, longest)
            self.progress = Progress()

    async def when_ready(self, job: Job) -> None:
        """`job` once the cache serves (the mirror copies into a store it can trust)."""
        await self._opened.wait()
        await job()

    def _open(self, report: Reconciliation) -> None:
        self.ready = True
        self._opened.set()
        self.failure = None
        log.info(
            "cache ready %s",
            fields(
                files=report.files,
                reindexed=report.reindexed,
                skipped=report.skipped,
                s=f"{report.seconds:.2f}",
            ),
        )

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(self._report_every_s)
            if self._retry_at is None:  # a failure was logged once, with its retry
                log.info("store reconcile progress %s", self.progress.fields())
            notify(f"STATUS={self.status()}")
