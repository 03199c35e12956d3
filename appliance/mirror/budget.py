"""Upstream's rate-limit budgets as its answers state them (`ratelimit-remaining:
76;w=21600`, Docker Hub's headers on GET and HEAD), per registry host and egress
credential, from every answer: the build hosts' pulls and the mirror's syncs alike.
The mirror spends a manifest GET only while more than `ratelimit.min` would be left."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from appliance.mirror.records import BudgetSeen
from appliance.oci.headers import ratelimit as parse

CREDENTIALS = ("anonymous", "regcache")
"""The egress identities a budget is kept for: clients' own credentials each have a
budget of their own, which no sync spends."""
_MAX_HOSTS = 256


class Budgets:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._seen: dict[tuple[str, str], BudgetSeen] = {}
        self.changed = False
        """Something new was seen since `take_changes` (the scheduler persists it)."""

    def seen(self, host: str, whose: str, headers: Mapping[str, str]) -> None:
        """An upstream answer's headers (`UpstreamClient.on_reply`)."""
        if whose not in CREDENTIALS:
            return
        remaining = parse(headers.get("ratelimit-remaining"))
        if remaining is None:
            return
        limit = parse(headers.get("ratelimit-limit"))
        key = (host, whose)
        if key not in self._seen and len(self._seen) >= _MAX_HOSTS:
            return
        self._seen[key] = BudgetSeen(
            host, whose, remaining[0], None if limit is None else limit[0],
            remaining[1] if remaining[1] is not None else (limit[1] if limit else None),
            self._clock(),
        )  # fmt: skip
        self.changed = True

    def allows(self, host: str, whose: str, minimum: int, spend: int = 1) -> BudgetSeen | None:
        """None if `spend` GETs leave at least `minimum` (or nothing is known, or what was
        seen is older than its window: it has refilled); else the budget that says no."""
        seen = self._seen.get((host, whose))
        if seen is None or seen.remaining - spend >= minimum:
            return None
        if seen.window_s is not None and self._clock() - seen.seen_s > seen.window_s:
            return None
        return seen

    def spent(self, host: str, whose: str) -> None:
        """A GET went out: count it until upstream's next answer says the figure."""
        seen = self._seen.get((host, whose))
        if seen is not None and seen.remaining > 0:
            self._seen[(host, whose)] = BudgetSeen(
                seen.registry, seen.credential, seen.remaining - 1, seen.limit,
                seen.window_s, seen.seen_s,
            )  # fmt: skip

    def all(self) -> list[BudgetSeen]:
        return sorted(self._seen.values(), key=lambda b: (b.registry, b.credential))

    def take_changes(self) -> list[BudgetSeen]:
        if not self.changed:
            return []
        self.changed = False
        return self.all()
