"""The `mirror:` section: what the managed mirror keeps, when it syncs, and how much of
upstream's rate limit it may spend. Key names follow regsync's where a user would look
for them (`defaults`, `schedule`, `interval`, `ratelimit.min/retry`, `parallel`,
`backup`, `tags.allow/deny/semver`)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, NoReturn

from croniter import croniter
from packaging.specifiers import InvalidSpecifier, SpecifierSet

from appliance.config.strict_yaml import check
from appliance.config.values import Duration, between, one_of
from appliance.oci.digest import Digest, DigestError
from appliance.oci.names import InvalidName, parse_image

if TYPE_CHECKING:
    from appliance.config.registries import Registries

MIN_RETRY_S = 300.0
"""regsync's floor too: a budget checked more often only burns HEADs and log lines."""


def _cron(text: str) -> None:
    if not croniter.is_valid(text):
        raise ValueError(f"{text!r} is not a cron expression (five fields, e.g. '0 3 * * *')")


def _regexes(patterns: tuple[str, ...]) -> None:
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f"{pattern!r} is not a regular expression: {e}") from e


def _semver(text: str) -> None:
    try:
        SpecifierSet(text)
    except InvalidSpecifier as e:
        raise ValueError(f"{text!r} is not a version range like '>=3.18,<4': {e}") from e


def _template(text: str) -> None:
    try:
        text.format(tag="t", date=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    except (KeyError, IndexError, ValueError) as e:
        raise ValueError(f"{text!r}: use {{tag}} and {{date:%Y%m%d}} only ({e})") from e
    if "{tag}" not in text and "{tag" not in text:
        raise ValueError(f"{text!r} must contain {{tag}}")


def _retry(value: Duration) -> None:
    if value.seconds < MIN_RETRY_S:
        raise ValueError(f"must be at least {int(MIN_RETRY_S)} seconds ('5m')")


def _interval(value: Duration) -> None:
    if value.seconds <= 0:
        raise ValueError("must be more than 0 (e.g. '6h')")


def _platform(value: str) -> None:
    parts = value.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise ValueError(f"{value!r}: expected OS/ARCH[/VARIANT], e.g. 'linux/arm64/v8'")


def _platforms(values: tuple[str, ...]) -> None:
    for value in values:
        _platform(value)


@dataclass(frozen=True, slots=True)
class RateLimitConfig:
    min: int = field(default=0, metadata=check(between(0, 1_000_000)))
    """Wait while upstream's `ratelimit-remaining` for the credential a sync uses is below
    this: what is left is for the build hosts' own pulls."""
    retry: Duration = field(default=Duration(900.0), metadata=check(_retry))
    """How long to wait before asking again (at least 5 minutes)."""


@dataclass(frozen=True, slots=True)
class TagFilter:
    allow: tuple[str, ...] = field(default=(), metadata=check(_regexes))
    """Regular expressions (whole tag): mirror the tags matching any; none given: all."""
    deny: tuple[str, ...] = field(default=(), metadata=check(_regexes))
    """…except those matching any of these."""
    semver: str | None = field(default=None, metadata=check(_semver))
    """…and, if set, only tags that are versions in this range (`>=3.18,<4`)."""


@dataclass(frozen=True, slots=True)
class MirrorDefaults:
    schedule: str | None = field(default=None, metadata=check(_cron))
    """Cron expression (UTC) for syncs; unset: every `interval`."""
    interval: Duration = field(default=Duration(6 * 3600.0), metadata=check(_interval))
    ratelimit: RateLimitConfig = RateLimitConfig()
    parallel: int = field(default=2, metadata=check(between(1, 32)))
    """Tags copied at once."""
    backup: str = field(default="{tag}-backup-{date:%Y%m%d}", metadata=check(_template))
    """The ref that keeps a tag's old digest when the tag moves (its date is the move's)."""
    keep_backups: int = field(default=3, metadata=check(between(0, 1000)))
    """Backup refs kept per tag, newest first; older ones are pruned."""
    platforms: tuple[str, ...] = field(default=(), metadata=check(_platforms))
    """`os/arch[/variant]` copied from a multi-platform index (the index itself is kept
    byte-exact); empty: every platform."""
    referrers: bool = False
    """Also copy signatures and attestations (referrers API, else cosign's tag schema)."""


@dataclass(frozen=True, slots=True)
class MirrorEntryConfig:
    source: str
    """An image (`docker.io/library/alpine:3.20`) or a whole repository (`ghcr.io/org/app`)
    by its usual name; clients keep pulling it by that name."""
    tags: TagFilter | None = None
    """For a repository: which tags to mirror."""
    pin: str | None = None
    """For an image: serve this digest, whatever upstream's tag says."""
    access: str | None = field(default=None, metadata=check(one_of("network", "upstream")))
    """network: every client regcache admits; upstream: only clients upstream accepts for
    the repository. Unset: network when upstream serves the source to anyone, else upstream."""
    schedule: str | None = field(default=None, metadata=check(_cron))
    interval: Duration | None = field(default=None, metadata=check(_interval))
    ratelimit: RateLimitConfig | None = None
    parallel: int | None = field(default=None, metadata=check(between(1, 32)))
    backup: str | None = field(default=None, metadata=check(_template))
    keep_backups: int | None = field(default=None, metadata=check(between(0, 1000)))
    platforms: tuple[str, ...] | None = field(default=None, metadata=check(_platforms))
    referrers: bool | None = None


@dataclass(frozen=True, slots=True)
class MirrorConfig:
    defaults: MirrorDefaults = MirrorDefaults()
    entries: tuple[MirrorEntryConfig, ...] = ()


def check_entries(
    entries: tuple[MirrorEntryConfig, ...],
    registries: Registries,
    fail: Callable[[str, str], NoReturn],
) -> None:
    """Each source a name of a configured registry, listed once; `pin` only for an
    image, `tags` only for a repository."""
    seen: dict[str, int] = {}
    for i, entry in enumerate(entries):
        key = f"mirror.entries[{i}]"
        try:
            name = parse_image(entry.source)
        except InvalidName as e:
            fail(f"{key}.source", str(e))
        if registries.place(name.domain) is None:
            fail(f"{key}.source", f"{name.domain!r} is not an API host of a configured registry")
        if name.digest is not None:
            fail(f"{key}.source", "name a tag or a repository; pin a digest with 'pin'")
        if (previous := seen.setdefault(str(name), i)) != i:
            fail(f"{key}.source", f"{name} is already mirrored by mirror.entries[{previous}]")
        if entry.pin is not None:
            if name.tag is None:
                fail(f"{key}.pin", "only an image (a source with a tag) can be pinned")
            try:
                Digest.parse(entry.pin)
            except DigestError as e:
                fail(f"{key}.pin", str(e))
        if entry.tags is not None and name.tag is not None:
            fail(f"{key}.tags", "only a repository (a source without a tag) has tag filters")
