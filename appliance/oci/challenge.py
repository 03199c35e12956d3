"""`WWW-Authenticate` challenges (RFC 9110 11.6.1), parsed robustly.

Real headers carry several challenges (Quay sends Basic and Bearer in one), quoted values
with commas, and lower-case schemes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_TCHARS = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PARAM = re.compile(rf'\s*({_TCHARS})\s*=\s*("(?:[^"\\]|\\.)*"|{_TCHARS})\s*(,|$)')
_SCHEME = re.compile(rf"\s*,?\s*({_TCHARS})(?:\s+|$)")


@dataclass(frozen=True, slots=True)
class Challenge:
    scheme: str
    """Lower case: `bearer`, `basic`."""
    params: dict[str, str] = field(default_factory=dict)


def parse_challenges(header: str) -> list[Challenge]:
    challenges: list[Challenge] = []
    pos = 0
    while pos < len(header):
        scheme = _SCHEME.match(header, pos)
        if scheme is None:
            break
        pos = scheme.end()
        params: dict[str, str] = {}
        while pos < len(header):
            param = _PARAM.match(header, pos)
            if param is None:
                break
            value = param.group(2)
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            params[param.group(1).lower()] = value
            pos = param.end()
        challenges.append(Challenge(scheme.group(1).lower(), params))
    return challenges


def bearer(header: str) -> Challenge | None:
    for challenge in parse_challenges(header):
        if challenge.scheme == "bearer" and "realm" in challenge.params:
            return challenge
    return None
