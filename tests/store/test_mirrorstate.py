"""The managed mirror's rows in the real index: compare-and-swap moves with history,
backups and their pruning, the generation a running regcache watches, the requests the
CLI leaves, and mirrored content kept whatever the size bound says."""

from __future__ import annotations

import contextlib
import dataclasses
import sqlite3
import time

from appliance.mirror.records import BudgetSeen, Check, EntryRun, MirroredTag, Move, Place
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import OCI_MANIFEST
from appliance.store.eviction import protected_digests
from appliance.store.index import SqliteIndex
from appliance.store.reconcile import INDEX_NAME
from tests.store.stock import Store

A, B, C, D, E = (Digest.of(x) for x in (b"a", b"b", b"c", b"d", b"e"))
PLACE = Place("docker.io", "library/alpine", "3.20")
DAY = 86400.0


def tagged(
    digest: Digest, moved_s: float = 1000.0, place: Place = PLACE, pin: Digest | None = None
) -> MirroredTag:
    return MirroredTag(place, "alpine:3.20", digest, OCI_MANIFEST, 100, moved_s, "network", pin)


async def moved(
    index: SqliteIndex, digest: Digest, expect: Digest | None, at: float, backup: str | None
) -> Move | None:
    return await index.move_tag(
        tagged(digest, at), "sync", expect=expect, backup=backup, keep_backups=2
    )


def serving(tags: list[MirroredTag]) -> dict[str, tuple[Digest, str | None]]:
    return {t.place.tag: (t.digest, t.backup_of) for t in tags}


async def test_a_tag_moves_only_if_it_still_serves_what_the_mover_saw(store: Store) -> None:
    index = store.index
    assert await moved(index, A, None, 1000.0, "old") == Move(PLACE, None, A, 1000.0, "sync")
    # A second first copy, or a mover that saw another digest, loses and changes nothing.
    assert await moved(index, B, None, 2000.0, "old") is None
    assert await moved(index, B, C, 2000.0, "old") is None
    assert serving(await index.mirrored_tags()) == {"3.20": (A, None)}
    move = await moved(index, B, A, 2000.0, "3.20-old")
    assert move == Move(PLACE, A, B, 2000.0, "sync", "3.20-old")
    assert serving(await index.mirrored_tags()) == {"3.20": (B, None), "3.20-old": (A, "3.20")}
    assert [(m.old, m.new, m.reason) for m in await index.mirror_history(PLACE)] == [
        (None, A, "sync"),
        (A, B, "sync"),
    ]


async def test_backups_beyond_keep_backups_are_pruned_newest_kept(store: Store) -> None:
    index = store.index
    await moved(index, A, None, 1 * DAY, None)
    for day, (old, new) in enumerate([(A, B), (B, C), (C, D), (D, E)], start=2):
        assert await moved(index, new, old, day * DAY, f"3.20-day{day}") is not None
    tags = serving(await index.mirrored_tags())
    # keep_backups=2: the digests E replaced last (D, then C) are kept; A and B went.
    assert tags == {"3.20": (E, None), "3.20-day5": (D, "3.20"), "3.20-day4": (C, "3.20")}
    assert len(await index.mirror_history(PLACE)) == 5


async def test_a_backup_name_taken_by_another_digest_gets_a_suffix(store: Store) -> None:
    index = store.index
    await moved(index, A, None, 1000.0, None)
    await moved(index, B, A, 2000.0, "3.20-x")
    move = await moved(index, C, B, 3000.0, "3.20-x")
    assert move is not None and move.backup == "3.20-x.1"
    assert serving(await index.mirrored_tags())["3.20-x"] == (A, "3.20")
    assert serving(await index.mirrored_tags())["3.20-x.1"] == (B, "3.20")


async def test_a_backup_never_overwrites_a_mirrored_tag_bearing_its_name(store: Store) -> None:
    index = store.index
    other = Place("docker.io", "library/alpine", "3.20-x")
    await index.move_tag(tagged(A, place=other), "sync", expect=None, backup=None, keep_backups=2)
    await moved(index, A, None, 1000.0, None)
    move = await moved(index, B, A, 2000.0, "3.20-x")
    assert move is not None and move.backup == "3.20-x.1"
    tags = serving(await index.mirrored_tags())
    assert tags["3.20-x"] == (A, None) and tags["3.20-x.1"] == (A, "3.20")


async def test_a_backup_of_the_same_digest_is_reused_not_duplicated(store: Store) -> None:
    index = store.index
    await moved(index, A, None, 1000.0, None)
    await moved(index, B, A, 2000.0, "3.20-x")
    await moved(index, A, B, 3000.0, "3.20-y")
    move = await moved(index, B, A, 4000.0, "3.20-x")
    assert move is not None and move.backup == "3.20-x"
    assert sorted(serving(await index.mirrored_tags())) == ["3.20", "3.20-x", "3.20-y"]


async def test_every_change_a_running_regcache_must_see_bumps_the_generation(
    store: Store,
) -> None:
    index = store.index
    seen = [await index.mirror_generation()]
    await moved(index, A, None, 1000.0, None)
    seen.append(await index.mirror_generation())
    assert await index.set_mirror_pin(PLACE, A)
    seen.append(await index.mirror_generation())
    await index.add_entry("ghcr.io/org/app:v1", "upstream")
    seen.append(await index.mirror_generation())
    await index.ask("sync", ())
    seen.append(await index.mirror_generation())
    assert seen == list(range(seen[0], seen[0] + 5))
    # What upstream said is no reason to reload the mappings.
    await index.record_check(Check(PLACE, "alpine:3.20", B, 5000.0))
    assert await index.mirror_generation() == seen[-1]


async def test_only_a_mirrored_tag_not_a_backup_can_be_pinned(store: Store) -> None:
    index = store.index
    assert not await index.set_mirror_pin(PLACE, A)
    await moved(index, A, None, 1000.0, None)
    await moved(index, B, A, 2000.0, "3.20-old")
    assert not await index.set_mirror_pin(dataclasses.replace(PLACE, tag="3.20-old"), A)
    assert await index.set_mirror_pin(PLACE, C)
    pins = {t.place.tag: t.pin for t in await index.mirrored_tags()}
    assert pins == {"3.20": C, "3.20-old": None}


async def test_mirrored_digests_backups_and_pins_are_never_evicted(store: Store) -> None:
    index = store.index
    await moved(index, A, None, 1000.0, None)
    await moved(index, B, A, 2000.0, "3.20-old")
    await index.set_mirror_pin(PLACE, C)
    assert {str(A), str(B), str(C)} <= await index.pinned_digests()
    assert str(D) not in await index.pinned_digests()


async def test_a_request_is_taken_once_answered_and_read_back(store: Store) -> None:
    index = store.index
    first = await index.ask("sync", ("alpine:3.20", "ghcr.io/org/app"))
    second = await index.ask("diff", ())
    asked = await index.request(first)
    assert asked is not None and asked.entries == ("alpine:3.20", "ghcr.io/org/app")
    assert asked.started_s is None and asked.done_s is None
    taken = await index.next_request()
    assert taken is not None and taken.id == first and taken.started_s is not None
    taken = await index.next_request()
    assert taken is not None and taken.id == second and taken.action == "diff"
    assert await index.next_request() is None
    await index.finish_request(first, '{"entries": []}')
    done = await index.request(first)
    assert done is not None and done.done_s is not None and done.result == '{"entries": []}'
    assert await index.request(12345) is None


async def test_a_request_nobody_took_can_be_withdrawn_a_taken_one_cannot(store: Store) -> None:
    index = store.index
    untaken, taken = await index.ask("sync", ()), await index.ask("sync", ())
    await index.withdraw_request(untaken)
    assert await index.request(untaken) is None
    request = await index.next_request()
    assert request is not None and request.id == taken
    assert not await index.withdraw_request(taken)
    assert await index.request(taken) is not None


async def test_requests_answered_a_day_ago_are_dropped(store: Store) -> None:
    index = store.index
    old, new = await index.ask("diff", ()), await index.ask("diff", ())
    await index.next_request()
    await index.finish_request(old, "{}")
    with contextlib.closing(sqlite3.connect(store.root / INDEX_NAME)) as db, db:
        db.execute(
            "UPDATE mirror_requests SET done_s = ? WHERE id = ?", (time.time() - 2 * DAY, old)
        )
    await index.next_request()
    await index.finish_request(new, "{}")
    assert await index.request(old) is None and await index.request(new) is not None


async def test_checks_runs_budgets_and_added_entries_read_back_as_written(store: Store) -> None:
    index = store.index
    await index.record_check(Check(PLACE, "alpine:3.20", A, 1000.0))
    gone = Check(PLACE, "alpine:3.20", None, 2000.0, gone=True, error="404")
    await index.record_check(gone)  # replaces the earlier answer
    assert await index.mirror_checks() == [gone]
    run = EntryRun("alpine:3.20", "waiting", 1.0, 0.5, 9.0, 3.0, 1234, "budget")
    await index.record_run(run)
    assert await index.mirror_runs() == [run]
    budget = BudgetSeen("docker.io", "anonymous", 42, 100, 21600, 1000.0)
    await index.record_budget(budget)
    await index.record_budget(dataclasses.replace(budget, remaining=41, seen_s=1001.0))
    assert await index.mirror_budgets() == [
        dataclasses.replace(budget, remaining=41, seen_s=1001.0)
    ]
    await index.add_entry("ghcr.io/org/app:v1", "upstream")
    await index.add_entry("quay.io/org/tool:1", "network")
    assert await index.added_entries() == [
        ("ghcr.io/org/app:v1", "upstream"),
        ("quay.io/org/tool:1", "network"),
    ]


async def test_keep_backups_zero_writes_no_backup_and_prunes_the_old_ones(store: Store) -> None:
    index = store.index
    await moved(index, A, None, 1000.0, None)
    await moved(index, B, A, 2000.0, "3.20-old")
    move = await index.move_tag(
        tagged(C, 3000.0), "sync", expect=B, backup="3.20-x", keep_backups=0
    )
    assert move is not None and move.backup is None
    assert serving(await index.mirrored_tags()) == {"3.20": (C, None)}
    assert (await index.mirror_history(PLACE))[-1].backup is None


async def test_kept_referrers_are_kept_once_and_never_evicted(store: Store) -> None:
    index = store.index
    sig = await store.manifest([await store.blob(b"sig config"), await store.blob(b"sig")])
    await index.keep_referrers("docker.io", "library/alpine", A, [Digest.parse(sig)])
    await index.keep_referrers("docker.io", "library/alpine", A, [Digest.parse(sig)])  # again
    assert sig in await index.pinned_digests()
    protected = protected_digests(await index.snapshot(), set())
    assert {sig, str(Digest.of(b"sig config")), str(Digest.of(b"sig"))} <= protected
    with contextlib.closing(sqlite3.connect(store.root / INDEX_NAME)) as db:
        assert db.execute("SELECT count(*) FROM mirror_referrers").fetchone() == (1,)


async def test_moves_since_a_row_are_every_tags_oldest_first(store: Store) -> None:
    index = store.index
    other = Place("ghcr.io", "org/app", "v1")
    assert await index.mirror_moves_since(0) == []
    await moved(index, A, None, 1000.0, None)
    await index.move_tag(tagged(C, 1500.0, other), "sync", expect=None, backup=None,
                         keep_backups=2)  # fmt: skip
    await moved(index, B, A, 2000.0, "3.20-old")
    moves = await index.mirror_moves_since(0)
    assert [(m.place.tag, m.old, m.new, m.backup) for _, m in moves] == [
        ("3.20", None, A, None), ("v1", None, C, None), ("3.20", A, B, "3.20-old"),
    ]  # fmt: skip
    rows = [row for row, _ in moves]
    assert rows == sorted(rows) and len(set(rows)) == 3
    assert [m.new for _, m in await index.mirror_moves_since(rows[0])] == [C, B]
    assert await index.mirror_moves_since(rows[-1]) == []
    refused = await moved(index, C, A, 3000.0, None)  # a mover that saw A: no row
    assert refused is None and await index.mirror_moves_since(rows[-1]) == []


async def test_forgetting_an_entry_drops_its_rows_and_referrers_keeps_history(
    store: Store,
) -> None:
    index = store.index
    await index.add_entry("alpine:3.20", "network")
    await moved(index, A, None, 1000.0, None)
    await moved(index, B, A, 2000.0, "3.20-old")  # a backup of A, same entry
    await index.keep_referrers("docker.io", "library/alpine", B, [C])
    other = dataclasses.replace(tagged(D, 1000.0, Place("ghcr.io", "org/app", "v1")),
                                entry="ghcr.io/org/app")  # fmt: skip
    await index.move_tag(other, "sync", expect=None, backup=None, keep_backups=2)
    await index.record_check(Check(PLACE, "alpine:3.20", B, 2000.0))
    assert await index.forget_entry("alpine:3.20") == 2
    assert [t.place for t in await index.mirrored_tags()] == [other.place]
    assert await index.added_entries() == [] and await index.mirror_checks() == []
    pinned = await index.pinned_digests()
    assert str(D) in pinned and not {str(A), str(B), str(C)} & pinned
    assert len(await index.mirror_history(PLACE)) == 2
