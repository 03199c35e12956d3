"""Who may push through regcache, per registry and repository (`registries[].push`):
rules in order, the first whose glob matches the repository decides."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from appliance.config.strict_yaml import check
from appliance.config.values import non_empty, one_of

PASS_THROUGH, DENY = "pass_through", "deny"


def _policy(value: str) -> None:
    if value == "local":
        raise ValueError(
            "'local' is a registry of its own, not a rule: name it under local.hosts"
            " (a local rule here would shadow this registry's own images)"
        )
    one_of(PASS_THROUGH, DENY)(value)


@dataclass(frozen=True, slots=True)
class PushRule:
    repositories: tuple[str, ...] = field(default=("*",), metadata=check(non_empty))
    """Globs (`team/*`, `*`; `*` also matches across `/`), as clients name the repository
    (`library/alpine` and `alpine` alike on Docker Hub)."""
    policy: str = field(default=PASS_THROUGH, metadata=check(_policy))
    """pass_through: uploads and manifests go upstream with the client's own credentials
    (never regcache's); deny: refused at once with 403 DENIED, nothing reaches upstream."""


def push_policy(rules: Sequence[PushRule], names: Iterable[str]) -> str:
    """The policy for a repository going by `names`; pass_through when no rule matches."""
    names = tuple(names)
    for rule in rules:
        if any(fnmatch.fnmatchcase(n, glob) for n in names for glob in rule.repositories):
            return rule.policy
    return PASS_THROUGH
