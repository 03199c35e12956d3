"""The mirror's entries as it works with them: the config's `mirror.entries` and those
`regcache mirror add` added, each resolved to where it lives and which upstream host
to ask, with the defaults filled in; and which of a repository's tags an entry takes."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

from appliance.config.mirror import MirrorConfig, MirrorEntryConfig, RateLimitConfig, TagFilter
from appliance.config.registries import Registries
from appliance.mirror.records import Place
from appliance.oci.digest import Digest
from appliance.oci.names import ImageName, parse_image


@dataclass(frozen=True, slots=True)
class Entry:
    source: str
    """As configured: the key of its runs, status and metrics."""
    registry: str
    """Where its tags are keyed (`Registries.place`)."""
    origin: str
    """The API host asked, `registry-1.docker.io`."""
    repository: str
    tag: str | None
    """None: a whole repository (its tags chosen by `tags`)."""
    tags: TagFilter
    pin: Digest | None
    access: str | None
    """network, upstream, or None: decided by whether upstream serves it to anyone."""
    schedule: str | None
    interval_s: float
    ratelimit: RateLimitConfig
    parallel: int
    backup: str
    keep_backups: int
    platforms: tuple[str, ...]
    referrers: bool

    def place(self, tag: str) -> Place:
        return Place(self.registry, self.repository, tag)

    @property
    def url(self) -> str:
        return f"https://{self.origin}/v2/{self.repository}"


def resolve(
    config: MirrorConfig, registries: Registries, added: Sequence[tuple[str, str]] = ()
) -> list[Entry]:
    """Every entry, configured ones first; one added for a source also configured, or
    whose registry is no longer configured, is left out."""
    entries = [_entry(e, config, registries) for e in config.entries]
    known = {e.source for e in entries} | {str(parse_image(e.source)) for e in config.entries}
    for source, access in added:
        name = parse_image(source)
        if str(name) in known or registries.place(name.domain) is None:
            continue
        entries.append(_entry(MirrorEntryConfig(source, access=access), config, registries))
        known.add(str(name))
    return entries


def _entry(entry: MirrorEntryConfig, config: MirrorConfig, registries: Registries) -> Entry:
    name: ImageName = parse_image(entry.source)
    registry, origin = registries.place(name.domain), registries.origin(name.domain)
    if registry is None or origin is None:  # the config check refuses these
        raise ValueError(f"{entry.source}: no configured registry serves {name.domain}")
    d = config.defaults
    return Entry(
        source=entry.source,
        registry=registry,
        origin=origin,
        repository=name.repository,
        tag=name.tag,
        tags=entry.tags or TagFilter(),
        pin=Digest.parse(entry.pin) if entry.pin else None,
        access=entry.access,
        schedule=entry.schedule if entry.schedule is not None else (
            None if entry.interval is not None else d.schedule),
        interval_s=(entry.interval or d.interval).seconds,
        ratelimit=entry.ratelimit or d.ratelimit,
        parallel=entry.parallel or d.parallel,
        backup=entry.backup or d.backup,
        keep_backups=d.keep_backups if entry.keep_backups is None else entry.keep_backups,
        platforms=d.platforms if entry.platforms is None else entry.platforms,
        referrers=d.referrers if entry.referrers is None else entry.referrers,
    )  # fmt: skip


def chosen_tags(tags: list[str], wanted: TagFilter) -> list[str]:
    """The tags of a repository an entry mirrors, in upstream's order."""
    allow = [re.compile(p) for p in wanted.allow]
    deny = [re.compile(p) for p in wanted.deny]
    versions = SpecifierSet(wanted.semver) if wanted.semver else None
    out = []
    for tag in tags:
        if allow and not any(p.fullmatch(tag) for p in allow):
            continue
        if any(p.fullmatch(tag) for p in deny):
            continue
        if versions is not None and not _in_range(tag, versions):
            continue
        out.append(tag)
    return out


def _in_range(tag: str, versions: SpecifierSet) -> bool:
    try:
        return versions.contains(Version(tag), prereleases=False)
    except InvalidVersion:
        return False
