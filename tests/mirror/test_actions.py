"""What a person does to a mirrored tag, on the real index: pin, unpin, roll back (by
steps, to a digest, to a date); each refuses what cannot be served, saying why."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from appliance.mirror import actions
from appliance.mirror.actions import ActionError
from appliance.mirror.records import MirroredTag, Place
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import OCI_INDEX, OCI_MANIFEST
from appliance.store.index import SqliteIndex

A, B, C, D = (Digest.of(x) for x in (b"a", b"b", b"c", b"d"))
PLACE = Place("docker.io", "library/alpine", "3.20")
JAN, FEB, MAR = (datetime(2026, m, 1, tzinfo=UTC).timestamp() for m in (1, 2, 3))
STORE = {A: (OCI_INDEX, 10), B: (OCI_MANIFEST, 20), C: (OCI_MANIFEST, 30)}  # not D


async def stored(digest: Digest) -> tuple[str, int] | None:
    return STORE.get(digest)


async def mirrored(index: SqliteIndex, *moves: tuple[Digest, float]) -> None:
    """The tag served each digest from its time on (syncs), oldest first."""
    before = None
    for digest, at in moves:
        media_type, size = STORE[digest]
        tag = MirroredTag(PLACE, "alpine:3.20", digest, media_type, size, at, "network")
        backup = actions.backup_name(actions.DEFAULT_BACKUP, "3.20", at)
        assert await index.move_tag(tag, "sync", expect=before, backup=backup, keep_backups=3)
        before = digest


async def current(index: SqliteIndex) -> MirroredTag:
    return await actions.serving(index, PLACE)


def test_a_backup_is_named_by_the_template_with_the_move_in_utc() -> None:
    at = datetime(2026, 12, 1, 23, 30, tzinfo=UTC).timestamp()
    assert actions.backup_name("{tag}-{date:%Y%m%d}", "3.20", at) == "3.20-20261201"
    assert actions.backup_name("old-{tag}-{date:%H%M}", "v1", at) == "old-v1-2330"


async def test_pinning_what_it_serves_holds_it_without_a_move(index: SqliteIndex) -> None:
    await mirrored(index, (A, JAN))
    message = await actions.pin(index, PLACE, None, stored)
    assert message == f"{PLACE} pinned at {A}"
    assert (await current(index)).pin == A and len(await index.mirror_history(PLACE)) == 1


async def test_pinning_a_digest_it_keeps_as_a_backup_moves_the_tag_there(
    index: SqliteIndex,
) -> None:
    await mirrored(index, (A, JAN), (B, FEB))  # A is kept as B's backup
    message = await actions.pin(index, PLACE, A, stored, backup="{tag}-before-pin")
    assert message == f"{PLACE} moved to {A} and pinned"
    tag = await current(index)
    assert (tag.digest, tag.pin, tag.media_type, tag.size) == (A, A, OCI_INDEX, 10)
    last = (await index.mirror_history(PLACE))[-1]
    assert (last.old, last.new, last.reason, last.backup) == (B, A, "pin", "3.20-before-pin")


async def test_pinning_a_digest_it_does_not_keep_waits_for_the_next_sync(
    index: SqliteIndex,
) -> None:
    """Stored or not, only the sync's walk knows the image is whole (it fetches what is
    missing): the tag moves then, not at once."""
    await mirrored(index, (A, JAN))
    for digest in (B, D):  # B is in the store, D is not
        message = await actions.pin(index, PLACE, digest, stored)
        assert "the next sync fetches what is missing, then moves it" in message
        tag = await current(index)
        assert (tag.digest, tag.pin) == (A, digest)


async def test_a_backup_or_an_unmirrored_tag_cannot_be_pinned(index: SqliteIndex) -> None:
    with pytest.raises(ActionError, match="is not mirrored"):
        await actions.pin(index, PLACE, None, stored)
    await mirrored(index, (A, JAN), (B, FEB))
    backup = Place("docker.io", "library/alpine", "3.20-backup-20260201")
    with pytest.raises(ActionError, match=r"is a backup of 3\.20: pin that tag"):
        await actions.pin(index, backup, None, stored)


async def test_unpinning_lets_syncs_move_the_tag_again(index: SqliteIndex) -> None:
    await mirrored(index, (A, JAN))
    assert await actions.unpin(index, PLACE) == f"{PLACE} was not pinned"
    await actions.pin(index, PLACE, None, stored)
    assert "unpinned" in await actions.unpin(index, PLACE)
    assert (await current(index)).pin is None
    with pytest.raises(ActionError, match="is not mirrored"):
        await actions.unpin(index, Place("docker.io", "library/alpine", "edge"))


async def test_rolling_back_serves_the_digest_of_steps_moves_ago_pinned(
    index: SqliteIndex,
) -> None:
    await mirrored(index, (A, JAN), (B, FEB), (C, MAR))
    assert await actions.rollback_target(index, PLACE) == B
    assert await actions.rollback_target(index, PLACE, steps=2) == A
    with pytest.raises(ActionError, match="has 2 earlier digests, not 3"):
        await actions.rollback_target(index, PLACE, steps=3)
    with pytest.raises(ActionError, match="not 0"):
        await actions.rollback_target(index, PLACE, steps=0)
    before = time.time()
    move = await actions.rollback(index, PLACE, stored, steps=2)
    assert (move.old, move.new, move.reason) == (C, A, "rollback") and move.moved_s >= before
    tag = await current(index)
    assert (tag.digest, tag.pin, tag.media_type) == (A, A, OCI_INDEX)


async def test_rolling_back_to_a_digest_takes_only_one_it_served(index: SqliteIndex) -> None:
    await mirrored(index, (A, JAN), (B, FEB), (C, MAR))
    assert await actions.rollback_target(index, PLACE, to=str(A)) == A
    with pytest.raises(ActionError, match=f"never served {D}"):
        await actions.rollback_target(index, PLACE, to=str(D))
    with pytest.raises(ActionError, match=f"already serves {C}"):
        await actions.rollback(index, PLACE, stored, to=str(C))


@pytest.mark.parametrize(
    ("to", "digest"),
    [
        ("2026-01-15", A),
        ("2026-02-01T00:00:00", B),  # the move's own moment: already moved
        ("2026-01-31T23:59:59", A),
        ("2026-02-01T00:30:00+01:00", A),  # an offset is honoured: 23:30 UTC
        ("2026-12-31", C),
    ],
)
async def test_rolling_back_to_a_date_takes_what_it_served_then(
    index: SqliteIndex, to: str, digest: Digest
) -> None:
    await mirrored(index, (A, JAN), (B, FEB), (C, MAR))
    assert await actions.rollback_target(index, PLACE, to=to) == digest


async def test_a_date_before_the_mirror_or_no_date_at_all_is_refused(index: SqliteIndex) -> None:
    with pytest.raises(ActionError, match="has no history"):
        await actions.rollback_target(index, PLACE)
    await mirrored(index, (A, JAN), (B, FEB))
    with pytest.raises(ActionError, match="was not mirrored yet at 2025-06-01"):
        await actions.rollback_target(index, PLACE, to="2025-06-01")
    with pytest.raises(ActionError, match="neither a digest nor a date"):
        await actions.rollback_target(index, PLACE, to="last tuesday")


async def test_a_digest_no_longer_stored_is_not_served(index: SqliteIndex) -> None:
    await mirrored(index, (A, JAN), (B, FEB))

    async def lost(digest: Digest) -> tuple[str, int] | None:
        return None if digest == A else await stored(digest)

    with pytest.raises(ActionError, match=f"{A} is not in the store"):
        await actions.rollback(index, PLACE, lost)
    assert (await current(index)).digest == B


async def test_a_move_from_a_stale_view_is_refused_not_applied(index: SqliteIndex) -> None:
    await mirrored(index, (A, JAN), (B, FEB))
    stale = await current(index)
    await actions.pin(index, PLACE, A, stored)  # moves back to A
    with pytest.raises(ActionError, match="moved meanwhile; try again"):
        await actions.move(index, stale, C, "rollback", stored)
    assert (await current(index)).digest == A


async def test_a_pin_set_meanwhile_refuses_a_move_that_saw_none(index: SqliteIndex) -> None:
    await mirrored(index, (A, JAN))
    stale = await current(index)  # not pinned
    await actions.pin(index, PLACE, None, stored)  # pinned at A, digest unchanged
    with pytest.raises(ActionError, match="moved meanwhile; try again"):
        await actions.move(index, stale, B, "rollback", stored)
    assert (await current(index)).digest == A


async def test_rollback_past_the_kept_backups_is_refused_with_the_way_out(
    index: SqliteIndex,
) -> None:
    before = None
    for digest, at in ((A, JAN), (B, FEB), (C, MAR)):  # one backup kept: B
        media_type, size = STORE[digest]
        tag = MirroredTag(PLACE, "alpine:3.20", digest, media_type, size, at, "network")
        assert await index.move_tag(tag, "sync", expect=before, backup=f"b{at}", keep_backups=1)
        before = digest
    with pytest.raises(ActionError, match=r"older than the backups kept.*mirror pin"):
        await actions.rollback(index, PLACE, stored, steps=2)  # A: pruned, maybe evicted
    assert (await current(index)).digest == C
    assert (await actions.rollback(index, PLACE, stored)).new == B


async def test_a_push_through_regcache_moves_the_tag_with_a_push_row_unless_pinned(
    index: SqliteIndex,
) -> None:
    await mirrored(index, (A, JAN))
    moved = await actions.pushed(index, PLACE, B, stored, backup="{tag}-before-push")
    assert moved is not None
    tag = await current(index)
    assert (tag.digest, tag.pin, tag.media_type, tag.size) == (B, None, OCI_MANIFEST, 20)
    last = (await index.mirror_history(PLACE))[-1]
    assert (last.old, last.new, last.reason, last.backup) == (A, B, "push", "3.20-before-push")
    assert await actions.pushed(index, PLACE, B, stored) is None  # the same digest: no row
    await actions.pin(index, PLACE, None, stored)
    assert await actions.pushed(index, PLACE, C, stored) is None  # a pin holds
    assert (await current(index)).digest == B
    with pytest.raises(ActionError, match="not mirrored"):
        await actions.pushed(index, Place("docker.io", "library/other", "1"), C, stored)
