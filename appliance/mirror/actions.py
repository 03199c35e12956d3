"""What a person does to a mirrored tag: pin it, unpin it, roll it back. Each works on
the index alone (the content is local), so it works with upstream down and with
regcache stopped; a running regcache serves the result within a second."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from appliance.mirror.records import MirroredTag, MirrorRecords, Move, Place
from appliance.oci.digest import Digest

DEFAULT_BACKUP = "{tag}-backup-{date:%Y%m%d}"

Stored = Callable[[Digest], Awaitable[tuple[str, int] | None]]
"""A manifest's (media type, size) if the store holds it."""


class ActionError(Exception):
    """The tag is not mirrored, or what was asked for cannot be served."""


def backup_name(template: str, tag: str, moved_s: float) -> str:
    return template.format(tag=tag, date=datetime.fromtimestamp(moved_s, UTC))


async def serving(records: MirrorRecords, place: Place) -> MirroredTag:
    for tag in await records.mirrored_tags():
        if tag.place == place:
            return tag
    raise ActionError(f"{place} is not mirrored (see `regcache mirror status`)")


async def move(
    records: MirrorRecords,
    current: MirroredTag,
    digest: Digest,
    reason: str,
    stored: Stored,
    *,
    backup: str = DEFAULT_BACKUP,
    keep_backups: int = 3,
    pin: Digest | None = None,
) -> Move:
    """Serve `digest` for the tag now (held at `pin`), keeping the old one as a backup."""
    found = await stored(digest)
    if found is None:
        raise ActionError(f"{digest} is not in the store: it cannot be served for {current.place}")
    now = time.time()
    new = dataclasses.replace(
        current, digest=digest, media_type=found[0], size=found[1], moved_s=now, pin=pin
    )
    moved = await records.move_tag(
        new, reason, expect=current.digest, backup=backup_name(backup, current.place.tag, now),
        keep_backups=keep_backups, expect_pin=current.pin,
    )  # fmt: skip
    if moved is None:
        raise ActionError(f"{current.place} moved meanwhile; try again")
    return moved


async def pushed(
    records: MirrorRecords,
    place: Place,
    digest: Digest,
    stored: Stored,
    *,
    backup: str = DEFAULT_BACKUP,
    keep_backups: int = 3,
) -> Move | None:
    """A push through regcache that upstream accepted for a mirrored tag: a person's
    decision like a pin or a rollback, so the tag serves it at once (reason `push`, the
    old digest kept as a backup ref). A pinned tag holds; None when nothing moved."""
    current = await serving(records, place)
    if current.backup_of is not None or current.pin is not None or current.digest == digest:
        return None
    return await move(records, current, digest, "push", stored, backup=backup,
                      keep_backups=keep_backups)  # fmt: skip


async def held(records: MirrorRecords, current: MirroredTag) -> set[Digest]:
    """What the mirror keeps whole for a tag (never evicted): what it serves and its
    backup refs. Only these can be served at once, with upstream down too."""
    kept = {current.digest}
    for tag in await records.mirrored_tags():
        if tag.backup_of == current.place.tag and (tag.place.registry, tag.place.repository) == (
            current.place.registry, current.place.repository,
        ):  # fmt: skip
            kept.add(tag.digest)
    return kept


async def pin(
    records: MirrorRecords,
    place: Place,
    digest: Digest | None,
    stored: Stored,
    *,
    backup: str = DEFAULT_BACKUP,
    keep_backups: int = 3,
) -> str:
    """Hold the tag at `digest` (default: what it serves). A digest not in the store is
    held as wanted: the next sync fetches it and moves the tag."""
    current = await serving(records, place)
    if current.backup_of is not None:
        raise ActionError(f"{place} is a backup of {current.backup_of}: pin that tag")
    target = digest or current.digest
    if target == current.digest or target not in await held(records, current):
        await records.set_mirror_pin(place, target)
        if target == current.digest:
            return f"{place} pinned at {target}"
        return f"{place} pinned at {target}: the next sync fetches what is missing, then moves it"
    await move(records, current, target, "pin", stored, backup=backup,
               keep_backups=keep_backups, pin=target)  # fmt: skip
    return f"{place} moved to {target} and pinned"


async def unpin(records: MirrorRecords, place: Place) -> str:
    current = await serving(records, place)
    await records.set_mirror_pin(place, None)
    if current.pin is None:
        return f"{place} was not pinned"
    return f"{place} unpinned: the next sync moves it to upstream's digest"


async def rollback_target(
    records: MirrorRecords, place: Place, *, steps: int = 1, to: str | None = None
) -> Digest:
    """The digest the tag served `steps` moves ago, or `to`: a digest it served, or the
    time (ISO 8601, UTC unless it says) whose digest it was."""
    history = await records.mirror_history(place)
    if not history:
        raise ActionError(f"{place} has no history")
    if to is None:
        if steps < 1 or steps > len(history) or history[-steps].old is None:
            raise ActionError(f"{place} has {len(history) - 1} earlier digests, not {steps}")
        old = history[-steps].old
        assert old is not None
        return old
    served = {m.new for m in history}
    try:
        wanted = Digest.parse(to)
    except ValueError:
        wanted = None
    if wanted is not None:
        if wanted not in served:
            raise ActionError(f"{place} never served {wanted}")
        return wanted
    moment = _moment(to)
    before = [m for m in history if m.moved_s <= moment]
    if not before:
        raise ActionError(f"{place} was not mirrored yet at {to}")
    return before[-1].new


def _moment(text: str) -> float:
    try:
        when = datetime.fromisoformat(text)
    except ValueError as e:
        raise ActionError(f"{text!r} is neither a digest nor a date (2026-12-01T08:00)") from e
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


async def rollback(
    records: MirrorRecords,
    place: Place,
    stored: Stored,
    *,
    steps: int = 1,
    to: str | None = None,
    backup: str = DEFAULT_BACKUP,
    keep_backups: int = 3,
) -> Move:
    """Serve an earlier digest now, pinned there until unpinned (a sync must not undo it)."""
    current = await serving(records, place)
    target = await rollback_target(records, place, steps=steps, to=to)
    if target == current.digest:
        raise ActionError(f"{place} already serves {target}")
    if target not in await held(records, current):
        raise ActionError(
            f"{target} is older than the backups kept for {place} (keep_backups): its"
            f" content may be gone; `regcache mirror pin {place}@{target}` fetches what is"
            " missing at the next sync, then moves the tag"
        )
    return await move(records, current, target, "rollback", stored, backup=backup,
                      keep_backups=keep_backups, pin=target)  # fmt: skip
