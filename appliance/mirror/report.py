"""What the managed mirror is doing, entry by entry: each mirrored tag's serving digest,
pin, upstream's last answer and drift, each entry's runs, and the rate-limit budgets
seen; read from the index alone (`regcache mirror status`, the status page)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace

from appliance.mirror.entries import Entry
from appliance.mirror.records import BudgetSeen, Check, EntryRun, MirroredTag, MirrorRecords, Place
from appliance.oci.digest import Digest


@dataclass(frozen=True, slots=True)
class TagReport:
    tag: str
    serving: Digest
    pinned: Digest | None
    upstream: Digest | None
    """What upstream's tag named when last checked; None: never checked, or gone."""
    checked_s: float | None
    drift: str
    """`no`, `yes` (upstream names another digest), `gone` (upstream deleted the tag;
    the mirror keeps serving it) or `?` (never checked)."""
    access: str
    moved_s: float
    backups: int
    error: str | None
    """What the last check of the tag ran into."""


@dataclass(frozen=True, slots=True)
class EntryReport:
    source: str
    configured: bool
    """False: tags kept for an entry no longer in the config (nor added): still served."""
    access: str | None
    run: EntryRun | None
    tags: tuple[TagReport, ...]
    """Empty: not copied yet."""


@dataclass(frozen=True, slots=True)
class Report:
    entries: tuple[EntryReport, ...]
    budgets: tuple[BudgetSeen, ...]


def owner(entries: Sequence[Entry], place: Place, recorded: str | None = None) -> Entry | None:
    """The entry a tag belongs to: the one it was recorded under, else the image entry
    naming it, else a repository entry holding it (a source written another way in the
    config still finds its tags)."""
    for entry in entries:
        if entry.source == recorded:
            return entry
    for entry in entries:
        if entry.tag is not None and entry.place(entry.tag) == place:
            return entry
    for entry in entries:
        if entry.tag is None and (entry.registry, entry.repository) == (
            place.registry,
            place.repository,
        ):
            return entry
    return None


def drift(serving: Digest, check: Check | None) -> str:
    if check is not None and check.gone:
        return "gone"
    if check is None or check.upstream is None:
        return "?"
    return "no" if check.upstream == serving else "yes"


async def report(records: MirrorRecords, entries: Sequence[Entry]) -> Report:
    everything = await records.mirrored_tags()
    backups = Counter(
        (t.place.registry, t.place.repository, t.backup_of) for t in everything if t.backup_of
    )
    checks = {c.place: c for c in await records.mirror_checks()}
    runs = {r.entry: r for r in await records.mirror_runs()}
    grouped: dict[str, list[TagReport]] = {e.source: [] for e in entries}
    accesses: dict[str, str] = {}
    for tag in everything:
        if tag.backup_of is not None:
            continue
        found = owner(entries, tag.place, tag.entry)
        source = tag.entry if found is None else found.source
        count = backups[(tag.place.registry, tag.place.repository, tag.place.tag)]
        if found is not None and found.pin is not None and tag.pin is None:
            tag = replace(tag, pin=found.pin)  # pinned by the config
        grouped.setdefault(source, []).append(_tag(tag, checks.get(tag.place), count))
        accesses.setdefault(source, tag.access)
    configured = {e.source: e.access for e in entries}
    return Report(
        tuple(
            EntryReport(
                source,
                source in configured,
                configured.get(source) or accesses.get(source),
                runs.get(source),
                tuple(tags),
            )
            for source, tags in grouped.items()
        ),
        tuple(await records.mirror_budgets()),
    )


def _tag(tag: MirroredTag, check: Check | None, backups: int) -> TagReport:
    return TagReport(
        tag=tag.place.tag,
        serving=tag.digest,
        pinned=tag.pin,
        upstream=None if check is None else check.upstream,
        checked_s=None if check is None else check.checked_s,
        drift=drift(tag.digest, check),
        access=tag.access,
        moved_s=tag.moved_s,
        backups=backups,
        error=None if check is None else check.error,
    )
