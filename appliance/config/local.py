"""The `local:` section: a registry that lives on the gateway only (issue #17). Its host
names are intercepted like any registry's, but nothing under them is ever asked of an
upstream: pushes, pulls, tags, deletes and referrers are regcache's own."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from appliance.config.hostnames import Hostname, is_within
from appliance.config.strict_yaml import check
from appliance.config.values import Duration, between, non_empty, one_of
from appliance.oci.names import DOCKER_HUB_HOSTS

if TYPE_CHECKING:
    from appliance.config.registries import Registries

ANYONE, USERS = "anonymous", "*"
"""Who a rule names besides user names: anyone at all, and anyone who logged in."""

PUBLIC_REGISTRIES = (
    *sorted(DOCKER_HUB_HOSTS), "ghcr.io", "quay.io", "gcr.io", "pkg.dev", "registry.k8s.io",
    "k8s.gcr.io", "public.ecr.aws", "amazonaws.com", "mcr.microsoft.com", "azurecr.io",
    "registry.gitlab.com", "nvcr.io",
)  # fmt: skip
"""Names (and the domains below them) of registries people pull from: a local host
under one of them would shadow that registry's images."""


def shadowed_public(name: str) -> str | None:
    """The public registry `name` lies under (it would shadow that registry's images)."""
    return next((p for p in PUBLIC_REGISTRIES if is_within(name, p)), None)


def _duration_positive(value: Duration) -> None:
    if value.seconds <= 0:
        raise ValueError("must be more than 0 (e.g. '24h')")


@dataclass(frozen=True, slots=True)
class LocalRule:
    repositories: tuple[str, ...] = field(default=("*",), metadata=check(non_empty))
    """Globs over repository names (`team/*`; `*` also matches across `/`)."""
    read: tuple[str, ...] = (USERS,)
    """Who may pull: user names from `auth.htpasswd`, `*` (every user who logged in;
    everyone when there is no htpasswd file) or `anonymous` (everyone)."""
    write: tuple[str, ...] = (USERS,)
    """Who may push and delete, named the same way."""


@dataclass(frozen=True, slots=True)
class LocalAuth:
    htpasswd: Path | None = None
    """Users and their bcrypt hashes (`htpasswd -B`), re-read when the file changes.
    Unset: nobody logs in, and `*` in a rule means everyone."""
    scheme: str = field(default="token", metadata=check(one_of("token", "basic")))
    """token: clients get a bearer challenge for regcache's own realm
    (`https://HOST/token`), which checks the password once per token; basic: a Basic
    challenge, every request carries the password. Either way a request that brings
    Basic credentials is taken (curl, scripts)."""
    token_ttl: Duration = field(default=Duration(300.0), metadata=check(_duration_positive))


@dataclass(frozen=True, slots=True)
class LocalConfig:
    hosts: tuple[Hostname, ...] = ()
    """The names the local registry goes by (`registry.build.internal`); none: no local
    registry. Intercepted by DNS and given certificates like every registry's."""
    purge_uploads_after: Duration = field(
        default=Duration(86400.0), metadata=check(_duration_positive)
    )
    """An upload not continued for this long is abandoned: its bytes are removed."""
    max_uploads: int = field(default=256, metadata=check(between(1, 100_000)))
    """Uploads open at once; beyond it the oldest idle one is abandoned."""
    auth: LocalAuth = LocalAuth()
    access: tuple[LocalRule, ...] = (LocalRule(),)
    """Rules in order; the first whose glob matches the repository decides. No rule
    matches: nobody may read or write it."""


def check_local(
    local: LocalConfig,
    registries: Registries,
    fail: Callable[[str, str], NoReturn],
) -> None:
    """The local hosts shadow no upstream: neither a configured registry's names nor a
    public registry's."""
    for i, host in enumerate(local.hosts):
        key = f"local.hosts[{i}]"
        if registries.route(host) is not None or registries.contacted(host):
            fail(key, f"{host!r} is a configured registry's host (API, auth or redirect):"
                      " local names must be new")  # fmt: skip
        public = shadowed_public(host)
        if public is not None:
            fail(key, f"{host!r} would shadow the public registry {public!r}: pick a name"
                      " of your own network (e.g. registry.build.internal)")  # fmt: skip
        if host in local.hosts[:i]:
            fail(key, f"{host!r} is listed twice")
