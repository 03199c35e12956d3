"""What the managed mirror keeps in the index: its tags (serving, pinned, backups), the
history of their moves, what upstream said last, each entry's runs, the rate-limit
budgets seen, and the requests `regcache mirror` leaves for the running process."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from appliance.oci.digest import Digest


class AnyPin:
    """`move_tag(expect_pin=ANY_PIN)`: whatever the tag is pinned at."""


ANY_PIN = AnyPin()


@dataclass(frozen=True, slots=True)
class Place:
    """A tag where the mirror keys it: the registry's name (or the host, under a `*.`
    pattern) and the repository as clients name it on Docker Hub (`library/alpine`)."""

    registry: str
    repository: str
    tag: str

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}:{self.tag}"


@dataclass(frozen=True, slots=True)
class MirroredTag:
    place: Place
    entry: str
    """The entry's source, as configured (or as `mirror add` named it)."""
    digest: Digest
    """What clients get for the tag now."""
    media_type: str
    size: int
    moved_s: float
    access: str
    """`network` or `upstream` (see `MirrorEntryConfig.access`)."""
    pin: Digest | None = None
    """Held at this digest by a person (pin, rollback) until unpinned."""
    backup_of: str | None = None
    """A backup ref: the tag whose old digest it keeps."""


@dataclass(frozen=True, slots=True)
class Move:
    place: Place
    old: Digest | None
    new: Digest
    moved_s: float
    reason: str
    """sync (scheduled or asked for), pin, rollback, add (from the cache); import and push
    are reserved for later issues."""
    backup: str | None = None
    """The backup ref written for `old`, if any."""


@dataclass(frozen=True, slots=True)
class Check:
    """What upstream said about a mirrored tag the last time it was asked (by HEAD)."""

    place: Place
    entry: str
    upstream: Digest | None
    checked_s: float
    gone: bool = False
    """Upstream answered 404: the tag was deleted there (the mirror keeps serving it)."""
    error: str | None = None


@dataclass(frozen=True, slots=True)
class EntryRun:
    entry: str
    state: str
    """idle, running, waiting (for rate-limit budget) or failed."""
    last_run_s: float | None = None
    last_success_s: float | None = None
    next_run_s: float | None = None
    duration_s: float | None = None
    fetched_bytes: int = 0
    """Bytes fetched upstream by the last run."""
    error: str | None = None


@dataclass(frozen=True, slots=True)
class BudgetSeen:
    """A rate-limit budget as upstream's `ratelimit-remaining` last stated it."""

    registry: str
    credential: str
    """`anonymous` or `regcache` (the egress identity spending it)."""
    remaining: int
    limit: int | None
    window_s: int | None
    seen_s: float


@dataclass(frozen=True, slots=True)
class Request:
    """A `regcache mirror sync|diff` left for the running process."""

    id: int
    action: str
    entries: tuple[str, ...]
    asked_s: float
    started_s: float | None = None
    done_s: float | None = None
    result: str | None = None
    """JSON, written when done."""


class MirrorRecords(Protocol):
    """The mirror's rows in the index (`store/mirrorstate.py`)."""

    async def mirror_generation(self) -> int: ...
    async def mirrored_tags(self) -> list[MirroredTag]: ...
    async def move_tag(
        self, tag: MirroredTag, reason: str, *, expect: Digest | None, backup: str | None,
        keep_backups: int, expect_pin: Digest | AnyPin | None = ANY_PIN,
    ) -> Move | None: ...  # fmt: skip
    async def set_mirror_pin(self, place: Place, pin: Digest | None) -> bool: ...
    async def keep_referrers(
        self, registry: str, repository: str, subject: Digest, digests: Sequence[Digest]
    ) -> None: ...
    async def mirror_moves_since(self, after: int) -> list[tuple[int, Move]]: ...
    async def mirror_history(self, place: Place) -> list[Move]: ...
    async def record_check(self, check: Check) -> None: ...
    async def mirror_checks(self) -> list[Check]: ...
    async def record_run(self, run: EntryRun) -> None: ...
    async def mirror_runs(self) -> list[EntryRun]: ...
    async def record_budget(self, budget: BudgetSeen) -> None: ...
    async def mirror_budgets(self) -> list[BudgetSeen]: ...
    async def added_entries(self) -> list[tuple[str, str]]: ...
    async def add_entry(self, source: str, access: str) -> None: ...
    async def forget_entry(self, source: str) -> int: ...
    async def ask(self, action: str, entries: tuple[str, ...]) -> int: ...
    async def next_request(self) -> Request | None: ...
    async def withdraw_request(self, request_id: int) -> bool: ...
    async def finish_request(self, request_id: int, result: str) -> None: ...
    async def request(self, request_id: int) -> Request | None: ...
