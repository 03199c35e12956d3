"""The managed mirror's tags shared by several gateways through the bucket (issue #19):
each mirrored tag one object, `mirror/tags/<registry>/<repository>/<tag>`, holding what
it serves, its pin and its history. A move or a pin is written there first, with
compare-and-swap (`If-Match` on the object as read, `If-None-Match: *` for a new one),
then to this gateway's index; a write that lost the race is read again and judged
anew, so no gateway's update is ever lost, and a move whose expectation no longer holds
is refused as it is on one gateway (`move_tag` returns None). `converge` brings this
gateway's index to what the others wrote.

With the bucket unreachable a move is made in the index alone (a rollback must work
offline); it is shared again by the next move of that tag made while it answers."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from appliance.kit.logfields import fields
from appliance.kit.logthrottle import LogThrottle
from appliance.mirror.records import (
    ANY_PIN,
    AnyPin,
    BudgetSeen,
    Check,
    EntryRun,
    MirroredTag,
    MirrorRecords,
    Move,
    Place,
    Request,
)
from appliance.oci.digest import Digest
from appliance.store.s3 import Bucket, BucketRefused, BucketUnavailable, Conflict
from appliance.store.tier import manifest_name

log = logging.getLogger(__name__)
_trouble_log = LogThrottle(log, interval_s=60.0)

PREFIX = "mirror/tags/"
_TRIES = 16  # compare-and-swap rounds before a write gives up (contention)
_HISTORY = 500  # moves kept per tag in its object
_Trouble = (BucketUnavailable, BucketRefused)


@dataclass(frozen=True, slots=True)
class Step:
    """A move, with the manifest type and size of what it moved to: another gateway
    replays it exactly (its backup ref included)."""

    move: Move
    media_type: str = ""
    size: int = 0


@dataclass(frozen=True, slots=True)
class Record:
    """A tag's object: what it serves and every move, oldest first."""

    serving: MirroredTag
    history: tuple[Step, ...]

    def encode(self) -> bytes:
        tag = self.serving
        return json.dumps({
            "serving": {"entry": tag.entry, "digest": str(tag.digest),
                        "media_type": tag.media_type, "size": tag.size,
                        "moved_s": tag.moved_s, "access": tag.access,
                        "pin": _text(tag.pin)},
            "history": [[_text(s.move.old), str(s.move.new), s.move.moved_s, s.move.reason,
                         s.move.backup, s.media_type, s.size]
                        for s in self.history[-_HISTORY:]],
        }, sort_keys=True).encode()  # fmt: skip

    @classmethod
    def decode(cls, place: Place, data: bytes) -> Record:
        raw = json.loads(data)
        s = raw["serving"]
        serving = MirroredTag(place, str(s["entry"]), Digest.parse(s["digest"]),
                              str(s["media_type"]), int(s["size"]), float(s["moved_s"]),
                              str(s["access"]), _digest(s["pin"]))  # fmt: skip
        history = tuple(
            Step(Move(place, _digest(old), Digest.parse(new), float(at), str(reason), backup),
                 str(media_type), int(size))
            for old, new, at, reason, backup, media_type, size in raw["history"]
        )  # fmt: skip
        return cls(serving, history)

    def moves(self) -> list[Move]:
        return [step.move for step in self.history]


def object_name(place: Place) -> str:
    return f"{PREFIX}{place.registry}/{place.repository}/{place.tag}"


def place_of(name: str) -> Place | None:
    rest = name.removeprefix(PREFIX)
    registry, _, path = rest.partition("/")
    repository, _, tag = path.rpartition("/")
    return Place(registry, repository, tag) if registry and repository and tag else None


class SharedMirror:
    """`MirrorRecords` over this gateway's index, moves and pins shared through the
    bucket; everything else (checks, runs, budgets, requests) stays per gateway."""

    def __init__(self, index: MirrorRecords, bucket: Bucket, *, keep_backups: int) -> None:
        self._index = index
        self._bucket = bucket
        self._keep_backups = keep_backups
        self._seen: dict[str, str] = {}
        """ETag of each tag's object as this gateway last applied it."""

    async def move_tag(
        self, tag: MirroredTag, reason: str, *, expect: Digest | None, backup: str | None,
        keep_backups: int, expect_pin: Digest | AnyPin | None = ANY_PIN,
    ) -> Move | None:  # fmt: skip
        place = tag.place
        for _ in range(_TRIES):
            try:
                record, etag = await self._read(place)
            except _Trouble as e:
                self._trouble("move", e)
                return await self._index.move_tag(tag, reason, expect=expect, backup=backup,
                    keep_backups=keep_backups, expect_pin=expect_pin)  # fmt: skip
            current = record.serving if record else await self._local(place)
            if (current.digest if current else None) != expect or (
                expect_pin is not ANY_PIN and current is not None and current.pin != expect_pin
            ):
                if record is not None and etag is not None:
                    await self._apply(record, etag)  # what won, here too
                return None
            old = current.digest if current else None
            backup_ref = backup if old not in (None, tag.digest) and keep_backups else None
            move = Move(place, old, tag.digest, tag.moved_s, reason, backup_ref)
            before = (
                record.history
                if record
                else tuple(Step(m) for m in await self._index.mirror_history(place))
            )
            history = (*before, Step(move, tag.media_type, tag.size))
            written = await self._write(place, Record(tag, history), etag)
            if written is None:
                continue  # another gateway wrote first: judge again on what it wrote
            await self._apply(Record(tag, history), written, keep_backups)
            return move
        log.warning("mirror share-contended %s", fields(place=place, tries=_TRIES))
        return None

    async def set_mirror_pin(self, place: Place, pin: Digest | None) -> bool:
        for _ in range(_TRIES):
            try:
                record, etag = await self._read(place)
            except _Trouble as e:
                self._trouble("pin", e)
                return await self._index.set_mirror_pin(place, pin)
            current = record.serving if record else await self._local(place)
            if current is None or current.backup_of is not None:
                return False
            held = Record(dataclasses.replace(current, pin=pin), record.history if record else ())
            written = await self._write(place, held, etag)
            if written is not None:
                await self._apply(held, written)
                return True
        return False

    async def mirror_history(self, place: Place) -> list[Move]:
        """Every gateway's moves of the tag, in the order they were made (the bucket's
        record); this gateway's own while the bucket does not answer."""
        try:
            record, _ = await self._read(place)
        except _Trouble as e:
            self._trouble("history", e)
            record = None
        return record.moves() if record else await self._index.mirror_history(place)

    async def manifest_info(self, digest: Digest) -> tuple[str, int] | None:
        """(media type, size) of a manifest another gateway shared (`store.tier`), so a
        tag can be moved to content this gateway has not pulled yet; None if the bucket
        does not hold it or does not answer."""
        try:
            info = await self._bucket.head(manifest_name(digest))
        except _Trouble as e:
            self._trouble("manifest", e)
            return None
        return None if info is None or not info.content_type else (info.content_type, info.size)

    async def converge(self) -> int:
        """Apply what other gateways wrote since this one last looked: the tags whose
        objects changed (one LIST, a GET per changed tag); how many were applied."""
        applied = 0
        async for item in self._bucket.listing(PREFIX):
            place = place_of(item.name)
            if place is None or self._seen.get(item.name) == item.etag:
                continue
            record, etag = await self._read(place)
            if record is not None and etag is not None:
                await self._apply(record, etag)
                applied += 1
        return applied

    async def _read(self, place: Place) -> tuple[Record | None, str | None]:
        body = await self._bucket.get(object_name(place))
        if body is None:
            return None, None
        try:
            data = await body.read()
        finally:
            body.close()
        try:
            return Record.decode(place, data), body.etag
        except (ValueError, KeyError, TypeError) as e:
            log.warning("mirror share-unreadable %s", fields(place=place, error=e))
            return None, body.etag  # replaced by the next write (If-Match on its ETag)

    async def _write(self, place: Place, record: Record, etag: str | None) -> str | None:
        """The new ETag, or None if another gateway wrote in between."""
        try:
            if etag is None:
                return await self._bucket.put(object_name(place), record.encode(), if_absent=True)
            return await self._bucket.put(object_name(place), record.encode(), if_match=etag)
        except Conflict:
            return None

    async def _apply(self, record: Record, etag: str, keep_backups: int | None = None) -> None:
        """This gateway's index serves what the record says, pinned as it says: the moves
        it has not made yet are replayed in order (their backup refs with them)."""
        tag, place = record.serving, record.serving.place
        local = await self._local(place)
        if local is None or local.digest != tag.digest:
            keep = self._keep_backups if keep_backups is None else keep_backups
            current = local.digest if local else None
            steps = _missing(record.history, current)
            for i, step in enumerate(steps):
                last = i == len(steps) - 1
                at = tag if last else dataclasses.replace(
                    tag, digest=step.move.new, media_type=step.media_type or tag.media_type,
                    size=step.size, moved_s=step.move.moved_s, pin=None,
                )  # fmt: skip
                await self._index.move_tag(at, step.move.reason, expect=current,
                                           backup=step.move.backup, keep_backups=keep)  # fmt: skip
                current = at.digest
        elif local.pin != tag.pin:
            await self._index.set_mirror_pin(place, tag.pin)
        self._seen[object_name(place)] = etag

    async def _local(self, place: Place) -> MirroredTag | None:
        return next((t for t in await self._index.mirrored_tags() if t.place == place), None)

    def _trouble(self, doing: str, error: Exception) -> None:
        what = fields(doing=doing, error=error, action="this-gateway-only")
        _trouble_log.warning(doing, "mirror share-unavailable %s", what)

    # Per gateway: the index's own.

    async def mirror_generation(self) -> int:
        return await self._index.mirror_generation()

    async def mirrored_tags(self) -> list[MirroredTag]:
        return await self._index.mirrored_tags()

    async def keep_referrers(
        self, registry: str, repository: str, subject: Digest, digests: Sequence[Digest]
    ) -> None:
        await self._index.keep_referrers(registry, repository, subject, digests)

    async def mirror_moves_since(self, after: int) -> list[tuple[int, Move]]:
        return await self._index.mirror_moves_since(after)

    async def record_check(self, check: Check) -> None:
        await self._index.record_check(check)

    async def mirror_checks(self) -> list[Check]:
        return await self._index.mirror_checks()

    async def record_run(self, run: EntryRun) -> None:
        await self._index.record_run(run)

    async def mirror_runs(self) -> list[EntryRun]:
        return await self._index.mirror_runs()

    async def record_budget(self, budget: BudgetSeen) -> None:
        await self._index.record_budget(budget)

    async def mirror_budgets(self) -> list[BudgetSeen]:
        return await self._index.mirror_budgets()

    async def added_entries(self) -> list[tuple[str, str]]:
        return await self._index.added_entries()

    async def add_entry(self, source: str, access: str) -> None:
        await self._index.add_entry(source, access)

    async def forget_entry(self, source: str) -> int:
        return await self._index.forget_entry(source)

    async def ask(self, action: str, entries: tuple[str, ...]) -> int:
        return await self._index.ask(action, entries)

    async def next_request(self) -> Request | None:
        return await self._index.next_request()

    async def withdraw_request(self, request_id: int) -> bool:
        return await self._index.withdraw_request(request_id)

    async def finish_request(self, request_id: int, result: str) -> None:
        await self._index.finish_request(request_id, result)

    async def request(self, request_id: int) -> Request | None:
        return await self._index.request(request_id)


def _missing(history: Sequence[Step], current: Digest | None) -> Sequence[Step]:
    """The steps after the last one that moved the tag to `current` (all of them when
    it is not mirrored here yet); only the last when `current` is not in the history
    (this gateway's index went its own way: the bucket's word is final)."""
    if current is None:
        return history
    for i in range(len(history) - 1, -1, -1):
        if history[i].move.new == current:
            return history[i + 1 :] or history[-1:]
    return history[-1:]


def _text(digest: Digest | None) -> str | None:
    return None if digest is None else str(digest)


def _digest(value: Any) -> Digest | None:
    return None if value is None else Digest.parse(str(value))
