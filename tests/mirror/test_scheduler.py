"""The mirror at work over the real index and cache: copies on start, never two runs of
an entry at once, schedules, the CLI's requests answered, moves made by another process
noticed and audited once, and runs that wait or fail retried after `ratelimit.retry`."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from appliance.mirror import actions, scheduler
from appliance.mirror.entries import Entry
from appliance.mirror.records import EntryRun, MirroredTag, Place
from appliance.mirror.scheduler import Mirror, next_run
from appliance.oci.digest import Digest
from appliance.store.index import SqliteIndex
from appliance.store.reconcile import INDEX_NAME
from tests.mirror.images import image, serve
from tests.mirror.rig import ALPINE, GHCR_APP, Rig

PLACE = Place("docker.io", "library/alpine", "3.20")
FIRST, SECOND = image("first"), image("second")


@dataclasses.dataclass
class Lab:
    rig: Rig
    mirror: Mirror
    audit: list[dict[str, Any]]
    configured: list[Entry]


@pytest.fixture
async def lab(rig: Rig) -> AsyncIterator[Lab]:
    audit: list[dict[str, Any]] = []
    configured = [rig.entry()]

    async def entries() -> list[Entry]:
        return list(configured)

    mirror = Mirror(entries, rig.index, rig.copier, rig.view, rig.budgets, audit=audit.append,
                    clock=lambda: rig.now[0])  # fmt: skip
    yield Lab(rig, mirror, audit, configured)
    await mirror.close()


async def until(check: Callable[[], Awaitable[bool]], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        assert time.monotonic() < deadline, "never happened"
        await asyncio.sleep(0.01)


async def serving(rig: Rig, place: Place = PLACE) -> Digest | None:
    return next((t.digest for t in await rig.index.mirrored_tags() if t.place == place), None)


def heads(rig: Rig, url: str) -> int:
    return sum(1 for m, u, _ in rig.upstream.calls if m == "HEAD" and u == url)


def test_the_next_run_follows_the_cron_schedule_in_utc_or_the_interval(rig: Rig) -> None:
    nightly = rig.entry(schedule="0 3 * * *")
    at = datetime(2026, 1, 1, 5, 0, tzinfo=UTC).timestamp()
    assert next_run(nightly, at) == datetime(2026, 1, 2, 3, 0, tzinfo=UTC).timestamp()
    early = datetime(2026, 1, 1, 2, 59, tzinfo=UTC).timestamp()
    assert next_run(nightly, early) == datetime(2026, 1, 1, 3, 0, tzinfo=UTC).timestamp()
    assert next_run(rig.entry(schedule=None, interval_s=5400.0), at) == at + 5400.0


async def test_on_start_entries_not_copied_yet_are_copied_the_others_wait(
    lab: Lab, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = lab.rig
    app = rig.entry("ghcr.io/org/app", tag="v1")
    lab.configured.append(app)
    v1 = Place("ghcr.io", "org/app", "v1")
    copied = MirroredTag(v1, app.source, SECOND.digest, SECOND.media_type, 1, 1.0, "network")
    await rig.index.move_tag(copied, "sync", expect=None, backup=None, keep_backups=3)
    await rig.index.record_run(EntryRun(app.source, "idle", last_run_s=rig.now[0] - 600.0))
    serve(rig.upstream, ALPINE, FIRST, "3.20")
    serve(rig.upstream, GHCR_APP, SECOND, "v1")
    monkeypatch.setattr(scheduler, "TICK_S", 0.01)
    task = asyncio.create_task(lab.mirror.run())
    try:
        await until(lambda: _is(serving(rig), FIRST.digest))
        await asyncio.sleep(0.05)  # a few more ticks
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert heads(rig, f"{GHCR_APP}/manifests/v1") == 0  # copied: it waits for its schedule
    assert lab.mirror._next[app.source] == rig.now[0] - 600.0 + 3600.0  # from its last run
    run = lab.mirror.runs["alpine:3.20"]
    assert run.state == "idle" and run.next_run_s == rig.now[0] + 3600.0
    assert rig.view.tag("registry-1.docker.io", "alpine", "3.20") is not None  # served now


async def _is(value: Awaitable[object], wanted: object) -> bool:
    return await value == wanted


async def test_a_run_still_going_is_not_started_again(lab: Lab) -> None:
    rig, mirror = lab.rig, lab.mirror
    serve(rig.upstream, ALPINE, FIRST, "3.20")
    rig.upstream.answer_gate = asyncio.Event()  # upstream hangs
    await mirror.reload()
    for _ in range(5):
        await mirror._tick()
        mirror._next["alpine:3.20"] = 0.0  # due again while the first still runs
        rig.now[0] += 7200.0
        await asyncio.sleep(0.01)
    assert len(rig.upstream.calls) == 1  # the first run's HEAD, waiting
    assert mirror.runs["alpine:3.20"].state == "running"
    rig.upstream.answer_gate.set()
    await until(lambda: _is(serving(rig), FIRST.digest))
    await asyncio.wait_for(asyncio.gather(*mirror._tasks), 10)  # every run spawned, done
    assert heads(rig, f"{ALPINE}/manifests/3.20") == 1


async def _state(mirror: Mirror, state: str) -> bool:
    return mirror.runs.get("alpine:3.20") is not None and mirror.runs["alpine:3.20"].state == state


async def answered(rig: Rig, request: int) -> dict[str, Any]:
    async def done() -> bool:
        found = await rig.index.request(request)
        return found is not None and found.done_s is not None

    await until(done)
    found = await rig.index.request(request)
    assert found is not None and found.result is not None
    result: dict[str, Any] = json.loads(found.result)
    return result


async def test_a_sync_request_from_the_cli_is_run_and_answered_in_json(lab: Lab) -> None:
    rig, mirror = lab.rig, lab.mirror
    serve(rig.upstream, ALPINE, FIRST, "3.20")
    await mirror.reload()
    mirror._next["alpine:3.20"] = float("inf")  # not on its schedule: only as asked
    request = await rig.index.ask("sync", ("alpine:3.20", "ghcr.io/org/nope"))
    await mirror._tick()
    assert await answered(rig, request) == {"entries": [
        {"entry": "alpine:3.20", "error": None, "waiting": None, "tags": [
            {"tag": "3.20", "serving": str(FIRST.digest), "upstream": str(FIRST.digest),
             "change": "new", "moved": True, "error": None},
        ]},
        {"entry": "ghcr.io/org/nope", "error": "no such entry", "waiting": None, "tags": []},
    ]}  # fmt: skip
    assert await serving(rig) == FIRST.digest
    assert await rig.index.next_request() is None  # taken once


async def test_a_diff_request_changes_nothing(lab: Lab) -> None:
    rig, mirror = lab.rig, lab.mirror
    serve(rig.upstream, ALPINE, FIRST, "3.20")
    await mirror.reload()
    mirror._next["alpine:3.20"] = float("inf")
    request = await rig.index.ask("diff", ())
    await mirror._tick()
    result = await answered(rig, request)
    [tag] = result["entries"][0]["tags"]
    assert (tag["change"], tag["moved"], tag["serving"]) == ("new", False, None)
    assert await rig.index.mirrored_tags() == [] and rig.gets() == []
    assert "alpine:3.20" not in mirror.runs  # a diff is no run


async def test_own_moves_are_audited_once_and_served_at_once(lab: Lab) -> None:
    rig, mirror = lab.rig, lab.mirror
    serve(rig.upstream, ALPINE, FIRST, "3.20")
    await mirror.reload()
    report = await mirror.run_entry(rig.entry(), move=True)
    assert report["tags"][0]["moved"] is True
    assert rig.view.tag("registry-1.docker.io", "library/alpine", "3.20") is not None
    assert [(a["outcome"], a["digest"], a["old_digest"], a["reference"]) for a in lab.audit] == [
        ("mirror-sync", str(FIRST.digest), None, "3.20")
    ]
    await mirror._tick()
    await mirror.reload()
    assert len(lab.audit) == 1


async def test_moves_made_before_the_start_are_not_audited_again(lab: Lab) -> None:
    rig = lab.rig
    serve(rig.upstream, ALPINE, FIRST, "3.20")
    await rig.copier.sync(rig.entry(), "3.20", {}, move=True)
    await lab.mirror.reload()
    await lab.mirror._tick()
    assert lab.audit == []


async def stored(rig: Rig) -> Callable[[Digest], Awaitable[tuple[str, int] | None]]:
    async def manifest(digest: Digest) -> tuple[str, int] | None:
        found = await rig.cache.manifest_body(digest)
        return None if found is None else (found[1], len(found[0]))

    return manifest


async def two_moves(lab: Lab) -> None:
    """The tag served FIRST, then SECOND (copied by this process)."""
    rig = lab.rig
    serve(rig.upstream, ALPINE, FIRST, "3.20")
    await lab.mirror.run_entry(rig.entry(), move=True)
    rig.now[0] += 86400.0
    serve(rig.upstream, ALPINE, SECOND, "3.20")
    await lab.mirror.run_entry(rig.entry(), move=True)
    assert await serving(rig) == SECOND.digest and len(lab.audit) == 2


async def test_a_rollback_by_another_process_is_served_and_audited_once(lab: Lab) -> None:
    rig, mirror = lab.rig, lab.mirror
    await mirror.reload()
    await two_moves(lab)
    other = await SqliteIndex.open(rig.root / INDEX_NAME)  # `regcache mirror rollback`
    try:
        await actions.rollback(other, PLACE, await stored(rig))
    finally:
        await other.close()
    assert rig.view.tag("registry-1.docker.io", "alpine", "3.20").digest == SECOND.digest  # type: ignore[union-attr]
    await mirror._tick()  # the generation moved: reloaded
    assert rig.view.tag("registry-1.docker.io", "alpine", "3.20").digest == FIRST.digest  # type: ignore[union-attr]
    assert [(a["outcome"], a["digest"], a["old_digest"]) for a in lab.audit[2:]] == [
        ("mirror-rollback", str(FIRST.digest), str(SECOND.digest))
    ]
    for _ in range(3):
        await mirror._tick()
    assert len(lab.audit) == 3


async def test_reloads_at_once_audit_each_move_once(lab: Lab) -> None:
    """The tick's reload (another process's pin) and a run's (its own move) meet."""
    rig, mirror = lab.rig, lab.mirror
    await mirror.reload()
    serve(rig.upstream, ALPINE, FIRST, "3.20")
    await rig.copier.sync(rig.entry(), "3.20", {}, move=True)  # not yet reloaded
    await asyncio.gather(mirror.reload(), mirror.reload(), mirror._tick())
    assert [a["outcome"] for a in lab.audit] == ["mirror-sync"]


async def test_a_run_waiting_for_budget_is_retried_after_ratelimit_retry(lab: Lab) -> None:
    rig, mirror = lab.rig, lab.mirror
    serve(rig.upstream, ALPINE, FIRST, "3.20")
    rig.budgets.seen("registry-1.docker.io", "anonymous", {"ratelimit-remaining": "3;w=21600"})
    await mirror.reload()
    report = await mirror.run_entry(rig.entry(), move=True)
    assert report["waiting"] is not None and rig.gets() == []
    run = mirror.runs["alpine:3.20"]
    assert (run.state, run.next_run_s) == ("waiting", rig.now[0] + 300.0)  # not in an hour
    assert run.error is not None and "rate-limit budget" in run.error
    assert (await rig.index.mirror_runs())[0].state == "waiting"
    assert mirror._next["alpine:3.20"] == rig.now[0] + 300.0
    rig.now[0] += 301.0
    rig.budgets.seen("registry-1.docker.io", "anonymous", {"ratelimit-remaining": "90;w=21600"})
    await mirror._tick()  # due: runs, and copies
    await until(lambda: _is(serving(rig), FIRST.digest))
    await until(lambda: _state(mirror, "idle"))
    assert mirror.runs["alpine:3.20"].last_success_s == rig.now[0]


async def test_a_failed_run_is_retried_after_ratelimit_retry_an_idle_one_on_schedule(
    lab: Lab,
) -> None:
    rig, mirror = lab.rig, lab.mirror
    rig.upstream.add("HEAD", f"{ALPINE}/manifests/3.20", 500)
    await mirror.reload()
    await mirror.run_entry(rig.entry(), move=True)
    run = mirror.runs["alpine:3.20"]
    assert (run.state, run.next_run_s) == ("failed", rig.now[0] + 300.0)
    assert run.error is not None and run.error.startswith("3.20: HEAD answered 500")
    serve(rig.upstream, ALPINE, FIRST, "3.20")
    await mirror.run_entry(rig.entry(), move=True)
    run = mirror.runs["alpine:3.20"]
    assert (run.state, run.next_run_s, run.error) == ("idle", rig.now[0] + 3600.0, None)
    assert run.fetched_bytes == len(FIRST.body) + sum(len(b) for b in FIRST.blobs.values())


async def test_a_cron_schedule_sooner_than_the_retry_wins(lab: Lab) -> None:
    rig, mirror = lab.rig, lab.mirror
    rig.now[0] = datetime(2026, 1, 1, 2, 58, tzinfo=UTC).timestamp()
    rig.upstream.add("HEAD", f"{ALPINE}/manifests/3.20", 500)
    await mirror.run_entry(rig.entry(schedule="0 3 * * *"), move=True)
    assert mirror.runs["alpine:3.20"].next_run_s == datetime(2026, 1, 1, 3, 0,
                                                             tzinfo=UTC).timestamp()  # fmt: skip


async def test_a_repository_takes_its_chosen_tags_and_keeps_those_upstream_dropped(
    lab: Lab,
) -> None:
    rig, mirror = lab.rig, lab.mirror
    app = dataclasses.replace(rig.entry("ghcr.io/org/app"), tags=dataclasses.replace(
        rig.entry("ghcr.io/org/app").tags, allow=("v.*",)))  # fmt: skip
    rig.upstream.add("GET", f"{GHCR_APP}/tags/list", 200,
                     b'{"tags": ["v1", "latest", "v2"]}')  # fmt: skip
    serve(rig.upstream, GHCR_APP, FIRST, "v1")
    serve(rig.upstream, GHCR_APP, SECOND, "v2")
    report = await mirror.run_entry(app, move=True)
    assert [(t["tag"], t["change"]) for t in report["tags"]] == [("v1", "new"), ("v2", "new")]
    rig.upstream.routes.clear()
    rig.upstream.add("GET", f"{GHCR_APP}/tags/list", 200, b'{"tags": ["v2"]}')
    serve(rig.upstream, GHCR_APP, SECOND, "v2")
    report = await mirror.run_entry(app, move=True)
    assert [(t["tag"], t["change"]) for t in report["tags"]] == [("v2", "none"), ("v1", "gone")]
    assert await serving(rig, Place("ghcr.io", "org/app", "v1")) == FIRST.digest
    gone = [c for c in await rig.index.mirror_checks() if c.place.tag == "v1"]
    assert len(gone) == 1 and gone[0].gone


async def test_a_tag_list_upstream_refuses_fails_the_run(lab: Lab) -> None:
    rig, mirror = lab.rig, lab.mirror
    rig.upstream.add("GET", f"{GHCR_APP}/tags/list", 401)
    report = await mirror.run_entry(rig.entry("ghcr.io/org/app"), move=True)
    assert report["error"] == f"GET {GHCR_APP}/tags/list answered 401"
    assert mirror.runs["ghcr.io/org/app"].state == "failed"


async def test_budgets_seen_are_written_by_the_tick_and_copies_no_longer_held(lab: Lab) -> None:
    rig, mirror = lab.rig, lab.mirror
    serve(rig.upstream, ALPINE, FIRST, "3.20")
    await mirror.reload()
    mirror._next["alpine:3.20"] = float("inf")
    rig.budgets.seen("registry-1.docker.io", "anonymous", {"ratelimit-remaining": "70;w=60"})
    await mirror._tick()
    assert [b.remaining for b in await rig.index.mirror_budgets()] == [70]
    await mirror.run_entry(rig.entry(), move=True)
    assert mirror.holding() == set()  # the tag moved: its content is the mirror's now


async def test_a_tag_whose_entry_was_removed_is_no_longer_served_by_the_mirror(
    lab: Lab,
) -> None:
    rig, mirror = lab.rig, lab.mirror
    serve(rig.upstream, ALPINE, FIRST, "3.20")
    await mirror.run_entry(rig.entry(), move=True)
    assert rig.view.tag("registry-1.docker.io", "library/alpine", "3.20") is not None
    lab.configured.clear()  # the entry left the config
    await mirror.reload()
    assert rig.view.tag("registry-1.docker.io", "library/alpine", "3.20") is None
    assert await serving(rig) == FIRST.digest  # its row and history stay


async def test_the_access_an_entry_sets_now_wins_over_the_one_recorded(lab: Lab) -> None:
    rig, mirror = lab.rig, lab.mirror
    serve(rig.upstream, ALPINE, FIRST, "3.20")
    await mirror.run_entry(rig.entry(), move=True)  # anonymous: recorded network
    answer = rig.view.tag("registry-1.docker.io", "library/alpine", "3.20")
    assert answer is not None and answer.network
    lab.configured[:] = [rig.entry(access="upstream")]
    await mirror.reload()
    answer = rig.view.tag("registry-1.docker.io", "library/alpine", "3.20")
    assert answer is not None and not answer.network
    assert not rig.view.opens("registry-1.docker.io", "library/alpine", FIRST.digest)


async def test_a_failing_index_does_not_stop_the_mirror(lab: Lab) -> None:
    rig, mirror = lab.rig, lab.mirror
    calls = 0
    real = rig.index.mirror_generation

    async def broken() -> int:
        nonlocal calls
        calls += 1
        if calls == 2:  # the first tick's (the start's reload was the first)
            raise OSError("database or disk is full")
        return await real()

    serve(rig.upstream, ALPINE, FIRST, "3.20")
    rig.index.mirror_generation = broken  # type: ignore[method-assign]
    task = asyncio.create_task(mirror.run())
    try:
        await until(lambda: _is(serving(rig), FIRST.digest))  # ticks went on and copied
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert calls > 2
