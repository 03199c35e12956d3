"""The mirror at work: on start, entries not copied yet are copied; then each entry runs
on its schedule (cron or interval), never twice at once; a run that meets the rate-limit
budget, or fails, tries again after `ratelimit.retry`. `regcache mirror sync|diff`
requests are taken from the index within a second, and so are the mappings another
process changed (pin, rollback): the view is reloaded and every new move audited once."""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from croniter import croniter

from appliance.cache.ports import UpstreamUnavailable
from appliance.kit.logfields import fields
from appliance.kit.logthrottle import LogThrottle
from appliance.kit.tasks import spawn
from appliance.mirror import actions
from appliance.mirror.budget import Budgets
from appliance.mirror.copier import Copier, TagResult, bounded
from appliance.mirror.entries import Entry, chosen_tags
from appliance.mirror.records import Check, EntryRun, MirroredTag, MirrorRecords, Move, Place
from appliance.mirror.report import owner
from appliance.mirror.tagslist import TagsListError, list_tags
from appliance.mirror.view import MirrorTags, network_content
from appliance.oci.digest import Digest

log = logging.getLogger(__name__)

TICK_S = 1.0
BUDGET_SAVE_S = 10.0
"""Budgets seen are written to the index at most this often (clients' pulls change them)."""
_RECENT_MOVES = 50


@dataclass(frozen=True, slots=True)
class Figures:
    """One entry as the status page and `/metrics` show it (from memory)."""

    entry: str
    tags: int
    drift: int
    """Tags whose upstream names another digest than the one served."""
    gone: int
    """Tags upstream deleted (still served)."""
    state: str
    last_success_s: float | None
    next_run_s: float | None
    duration_s: float | None
    fetched_bytes: int
    """Fetched upstream by this entry's runs since start."""
    error: str | None


def next_run(entry: Entry, after_s: float) -> float:
    if entry.schedule:
        start = datetime.fromtimestamp(after_s, UTC)
        return float(croniter(entry.schedule, start).get_next(float))
    return after_s + entry.interval_s


class Mirror:
    def __init__(
        self,
        entries: Callable[[], Awaitable[list[Entry]]],
        records: MirrorRecords,
        copier: Copier,
        view: MirrorTags,
        budgets: Budgets,
        *,
        audit: Callable[[dict[str, Any]], None] | None = None,
        journal: Callable[[], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`journal`: keep a copy of the mirror's rows outside the index (after changes)."""
        self._entries_of = entries
        self._records = records
        self._copier = copier
        self.view = view
        self.budgets = budgets
        self._audit = audit
        self._clock = clock
        self.entries: list[Entry] = []
        self.runs: dict[str, EntryRun] = {}
        self.checks: dict[Place, Check] = {}
        self.fetched_total: collections.Counter[str] = collections.Counter()
        self.moves: collections.deque[Move] = collections.deque(maxlen=_RECENT_MOVES)
        self._next: dict[str, float] = {}
        self._locks: collections.defaultdict[str, asyncio.Lock] = collections.defaultdict(
            asyncio.Lock
        )
        self._generation = -1
        self._journal = journal
        self._journalled = -1
        self._audited: int | None = None
        self._budgets_saved_s = 0.0
        self._tick_log = LogThrottle(log, interval_s=60.0)
        self._reloading = asyncio.Lock()
        """One reload at a time: the tick's and runs' would each audit the same moves."""
        self._tasks: set[asyncio.Task[Any]] = set()

    def figures(self) -> list[Figures]:
        counted: collections.Counter[tuple[str, str]] = collections.Counter()
        for place, answer in self.view.serving().items():
            check = self.checks.get(place)
            owner = check.entry if check is not None else ""
            counted[(owner, "tags")] += 1
            if check is not None and check.gone:
                counted[(owner, "gone")] += 1
            elif check is not None and check.upstream not in (None, answer):
                counted[(owner, "drift")] += 1
        out = []
        for entry in self.entries:
            run = self.runs.get(entry.source, EntryRun(entry.source, "idle"))
            out.append(Figures(
                entry.source, counted[(entry.source, "tags")], counted[(entry.source, "drift")],
                counted[(entry.source, "gone")], run.state, run.last_success_s,
                self._next.get(entry.source, run.next_run_s), run.duration_s,
                self.fetched_total[entry.source], run.error,
            ))  # fmt: skip
        return out

    def holding(self) -> set[str]:
        """Digests copied by runs in progress whose tags have not moved yet."""
        return set(self._copier.holding)

    async def pushed(self, host: str, repository: str, tag: str, digest: Digest) -> None:
        """A tag pushed through regcache (upstream accepted it): if the mirror serves that
        tag, it serves the push from now on (`actions.pushed`), in history as `push`."""
        place = self.view.place(host, repository, tag)
        if place is None:
            return
        check = self.checks.get(place)
        entry = owner(self.entries, place, check.entry if check is not None else None)
        backup = entry.backup if entry else actions.DEFAULT_BACKUP
        keep = entry.keep_backups if entry else 3
        try:
            moved = await actions.pushed(self._records, place, digest, self._stored,
                                         backup=backup, keep_backups=keep)  # fmt: skip
        except actions.ActionError as e:
            log.warning("mirror push-not-served %s", fields(tag=place, digest=digest, error=e))
            return
        if moved is not None:
            await self.reload()

    async def _stored(self, digest: Digest) -> tuple[str, int] | None:
        found = await self._copier.manifest_body(digest)
        return None if found is None else (found[1], len(found[0]))

    async def reload(self) -> None:
        """The index's mappings into the view; moves not seen yet audited."""
        async with self._reloading:
            self._generation = await self._records.mirror_generation()
            self.entries = await self._entries_of()
            tags = _served(self.entries, await self._records.mirrored_tags())
            self.view.load(tags, await network_content(tags, self._copier.manifest_body))
            moves = await self._records.mirror_moves_since(self._audited or 0)
            if self._audited is not None:
                for _, move in moves:
                    self._audit_move(move)
            self._audited = moves[-1][0] if moves else (self._audited or 0)
            if self._journal is not None and self._journalled != self._generation:
                try:
                    await self._journal()
                    self._journalled = self._generation
                except OSError as e:  # a full disk: the index still has it all; next change
                    log.warning("mirror journal-not-saved error=%s", e)

    async def run(self) -> None:
        """The background job."""
        await self.reload()
        self.runs.update({r.entry: r for r in await self._records.mirror_runs()})
        self.checks.update({c.place: c for c in await self._records.mirror_checks()})
        copied = {t.entry for t in await self._records.mirrored_tags()}
        now = self._clock()
        for entry in self.entries:  # restarts do not postpone a schedule: from the last run
            last = self.runs.get(entry.source, EntryRun(entry.source, "idle")).last_run_s
            due = now if entry.source not in copied or last is None else next_run(entry, last)
            self._next[entry.source] = due
        while True:
            try:
                await self._tick()
            except Exception as e:  # noqa: BLE001 - the index failed (a full disk, locked):
                # the mirror's bookkeeping must not stop regcache; the next tick tries again.
                self._tick_log.warning("tick", "mirror tick-failed error=%s", e)
            await asyncio.sleep(TICK_S)

    async def _tick(self) -> None:
        if await self._records.mirror_generation() != self._generation:
            await self.reload()
        while (request := await self._records.next_request()) is not None:
            self._spawn(self._answer(request.id, request.action, request.entries), "request")
        now = self._clock()
        for entry in self.entries:
            due = self._next.setdefault(entry.source, now)
            if due <= now and not self._locks[entry.source].locked():
                self._next[entry.source] = float("inf")  # until the run says when
                self._spawn(self._scheduled(entry), entry.source)
        if now >= self._budgets_saved_s + BUDGET_SAVE_S:
            self._budgets_saved_s = now
            await self._persist_budgets()

    async def _persist_budgets(self) -> None:
        for budget in self.budgets.take_changes():
            await self._records.record_budget(budget)

    def _spawn(self, work: Coroutine[Any, Any, Any], name: str) -> None:
        task = spawn(work, name=f"mirror {name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _scheduled(self, entry: Entry) -> None:
        try:
            await self.run_entry(entry, move=True)
        except Exception:
            # Not the run's own trouble (that is recorded): the index failed under it.
            log.exception("mirror run-crashed entry=%s", entry.source)
            now = self._clock()
            self._next[entry.source] = now + entry.ratelimit.retry.seconds
            run = self.runs.get(entry.source, EntryRun(entry.source, "idle"))
            self.runs[entry.source] = replace(run, state="failed", error="crashed: see the log",
                                              next_run_s=self._next[entry.source])  # fmt: skip

    async def _answer(self, request_id: int, action: str, names: tuple[str, ...]) -> None:
        """Run what `regcache mirror sync|diff` asked; its answer is written whatever
        happens (the asker waits for it)."""
        reports: list[dict[str, Any]] = []
        try:
            chosen = [e for e in self.entries if not names or e.source in names]
            for entry in chosen:
                reports.append(await self.run_entry(entry, move=action == "sync"))
            missing = set(names) - {e.source for e in chosen}
            reports += [{"entry": n, "error": "no such entry", "waiting": None, "tags": []}
                        for n in sorted(missing)]  # fmt: skip
            await self._persist_budgets()  # what the asker reads next (`mirror status`)
        except Exception as e:
            log.exception("mirror request-failed id=%d", request_id)
            reports.append({"entry": "", "error": f"{type(e).__name__}: {e}", "waiting": None,
                            "tags": []})  # fmt: skip
        await self._records.finish_request(request_id, json.dumps({"entries": reports}))

    async def run_entry(self, entry: Entry, *, move: bool) -> dict[str, Any]:
        """One run of an entry (`move` False: only ask upstream what it would change)."""
        async with self._locks[entry.source]:
            started = self._clock()
            previous = self.runs.get(entry.source, EntryRun(entry.source, "idle"))
            if move:
                self.runs[entry.source] = replace(previous, state="running", last_run_s=started)
            error: str | None = None
            results: list[TagResult] = []
            try:
                results = await self._sync_tags(entry, move=move)
            except (TagsListError, UpstreamUnavailable) as e:
                error = str(e)
            finally:
                if not any(lock.locked() for key, lock in self._locks.items()
                           if key != entry.source):  # fmt: skip
                    self._copier.holding.clear()
            await self._note(entry, results, started, previous, error, move=move)
            if any(r.moved for r in results):
                await self.reload()
            return _report(entry, results, error)

    async def _sync_tags(self, entry: Entry, *, move: bool) -> list[TagResult]:
        currents = {t.place: t for t in await self._records.mirrored_tags()}
        tags = [entry.tag] if entry.tag else await self._repository_tags(entry, currents)
        job = functools.partial(self._copier.sync, entry, currents=currents, move=move)
        return await bounded(entry.parallel, tags, job)

    async def _repository_tags(self, entry: Entry, currents: dict[Place, MirroredTag]) -> list[str]:
        """The tags the entry takes now, and those it took before that upstream dropped
        (they are kept, and said to be gone)."""
        listed = chosen_tags(await list_tags(self._copier.upstream, entry.url), entry.tags)
        before = [
            t.place.tag for t in currents.values()
            if t.entry == entry.source and t.backup_of is None and t.place.tag not in listed
        ]  # fmt: skip
        return listed + sorted(before)

    async def _note(
        self,
        entry: Entry,
        results: list[TagResult],
        started: float,
        previous: EntryRun,
        error: str | None,
        *,
        move: bool,
    ) -> None:
        now = self._clock()
        for r in results:
            check = Check(entry.place(r.tag), entry.source, r.upstream, now,
                          gone=r.change == "gone", error=r.error)  # fmt: skip
            self.checks[check.place] = check
            await self._records.record_check(check)
        if not move:
            return
        waiting = next((r.error for r in results if r.change == "waiting"), None)
        error = error or next((f"{r.tag}: {r.error}" for r in results if r.change == "error"), None)
        fetched = sum(r.fetched_bytes for r in results)
        self.fetched_total[entry.source] += fetched
        ok = error is None and waiting is None
        retry = now + entry.ratelimit.retry.seconds
        self._next[entry.source] = next_run(entry, now) if ok else min(retry, next_run(entry, now))
        run = EntryRun(
            entry.source, "idle" if ok else ("waiting" if waiting else "failed"),
            last_run_s=started, last_success_s=now if ok else previous.last_success_s,
            next_run_s=self._next[entry.source], duration_s=now - started,
            fetched_bytes=fetched, error=error or waiting,
        )  # fmt: skip
        self.runs[entry.source] = run
        await self._records.record_run(run)
        log.log(
            logging.INFO if ok else logging.WARNING,
            "mirror run %s",
            fields(entry=entry.source, state=run.state, tags=len(results),
                   moved=sum(r.moved for r in results), bytes=fetched,
                   seconds=round(now - started, 3), error=run.error),
        )  # fmt: skip

    def _audit_move(self, move: Move) -> None:
        self.moves.append(move)
        if self._audit is None:
            return
        self._audit({
            "time": datetime.fromtimestamp(move.moved_s, UTC).isoformat(timespec="milliseconds"),
            "kind": "mirror", "registry": move.place.registry,
            "repository": move.place.repository, "reference": move.place.tag,
            "digest": str(move.new), "old_digest": None if move.old is None else str(move.old),
            "outcome": f"mirror-{move.reason}", "backup": move.backup,
        })  # fmt: skip

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _served(entries: Sequence[Entry], tags: Sequence[MirroredTag]) -> list[MirroredTag]:
    """The tags the mirror serves: those an entry still owns (one removed from the config
    no longer answers: pulls go through the cache again; its rows, and what they keep,
    stay until `regcache mirror rm`), with the access its entry sets now."""
    out = []
    for tag in tags:
        found = owner(entries, tag.place, tag.entry)
        if found is not None:
            out.append(
                tag if found.access in (None, tag.access) else replace(tag, access=found.access)
            )
    return out


def _report(entry: Entry, results: list[TagResult], error: str | None) -> dict[str, Any]:
    waiting = next((r.error for r in results if r.change == "waiting"), None)
    return {
        "entry": entry.source, "error": error, "waiting": waiting,
        "tags": [
            {"tag": r.tag, "serving": _text(r.serving), "upstream": _text(r.upstream),
             "change": r.change, "moved": r.moved, "error": r.error}
            for r in results
        ],
    }  # fmt: skip


def _text(value: object) -> str | None:
    return None if value is None else str(value)
