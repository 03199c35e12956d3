"""Host name normalisation and the exact-or-wildcard patterns that select intercepted hosts."""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NewType

from publicsuffixlist import PublicSuffixList

Hostname = NewType("Hostname", str)
"""A normalised DNS host name (lower case, no trailing dot)."""
HostPattern = NewType("HostPattern", str)
"""A normalised host name, or `*.suffix` for any name strictly below `suffix`."""

# RFC 1123 labels; underscores are tolerated because real CDN names use them.
_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")  # fullmatch


class HostnameError(ValueError):
    """A string that is not a usable DNS host name or pattern."""


def normalise(name: str) -> str:
    """Lower-case, strip one trailing dot; the canonical key for every host lookup."""
    return name.strip().lower().removesuffix(".")


def is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


def check_hostname(name: str) -> Hostname:
    """Return the normalised name or raise `HostnameError` saying what is wrong."""
    host = normalise(name)
    if not host:
        raise HostnameError("empty host name")
    if is_ip_literal(host):
        raise HostnameError(f"{name!r} is an IP address, not a host name")
    if len(host) > 253:
        raise HostnameError(f"{name!r} is longer than 253 characters")
    for label in host.split("."):
        if not _LABEL.fullmatch(label):
            raise HostnameError(f"{name!r} has an invalid label {label!r}")
    return Hostname(host)


def check_pattern(pattern: str) -> HostPattern:
    """A host name, or `*.suffix` meaning any name strictly below `suffix`."""
    text = normalise(pattern)
    if text.startswith("*."):
        suffix = check_hostname(text[2:])
        if "." not in suffix:
            raise HostnameError(f"{pattern!r} would match a whole top-level domain")
        return HostPattern("*." + suffix)
    if "*" in text:
        raise HostnameError(f"{pattern!r}: a wildcard is only allowed as a leading '*.'")
    return HostPattern(check_hostname(text))


@functools.cache
def _suffixes() -> PublicSuffixList:
    return PublicSuffixList()  # the list the package ships, ICANN and private sections


def too_broad(domain: str) -> str | None:
    """Why a CA constrained to `domain` could impersonate others' names (a single label,
    or a public suffix such as `co.uk` or `s3.amazonaws.com`), else None."""
    if "." not in domain:
        return f"{domain!r} is a single label: every name under it would be signable"
    if _suffixes().is_public(domain):
        return (
            f"{domain!r} is a public suffix: names anyone can register under it would be signable"
        )
    return None


def is_within(host: str, domain: str) -> bool:
    """True when `host` equals `domain` or lies below it (X.509 dNSName subtree rules)."""
    return host == domain or host.endswith("." + domain)


@dataclass(frozen=True, slots=True)
class HostSet:
    """Exact names plus `*.suffix` patterns; `match` takes any spelling of a name."""

    exact: frozenset[str]
    suffixes: tuple[str, ...]

    @classmethod
    def of(cls, patterns: Iterable[str]) -> HostSet:
        exact: set[str] = set()
        suffixes: list[str] = []
        for raw in patterns:
            pattern = check_pattern(raw)
            if pattern.startswith("*."):
                suffixes.append(pattern[2:])
            else:
                exact.add(pattern)
        return cls(frozenset(exact), tuple(sorted(set(suffixes))))

    def match(self, name: str) -> bool:
        """Whether `name` is one of the exact names, or a well-formed host name under a
        pattern (`a b.pkg.dev` is not: a leaf must never be minted for it). Names come
        from the network: nothing is stripped, only case and one trailing dot ignored."""
        host = name.lower().removesuffix(".")
        if host in self.exact:
            return True
        if not any(host.endswith("." + suffix) for suffix in self.suffixes):
            return False
        try:
            check_hostname(host)
        except HostnameError:
            return False
        return True

    def pattern_for(self, name: str) -> str | None:
        """The exact name or `*.suffix` pattern `name` matches (a bounded label), or None."""
        if not self.match(name):
            return None
        host = name.lower().removesuffix(".")
        if host in self.exact:
            return host
        return "*." + max((s for s in self.suffixes if host.endswith("." + s)), key=len)

    def patterns(self) -> list[str]:
        return sorted(self.exact) + ["*." + s for s in self.suffixes]
