"""Repository names and tags, with the grammar of the OCI distribution spec."""

from __future__ import annotations

import re
from dataclasses import dataclass

from appliance.oci.digest import Digest, DigestError

# distribution-spec "Pulling manifests": <name> and <reference> grammars.
# Checked with fullmatch: `$` would also match before a trailing newline.
_NAME = re.compile(r"[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*")
_TAG = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
MAX_NAME_LENGTH = 255
DOCKER_HUB_HOSTS = frozenset(
    {"registry-1.docker.io", "index.docker.io", "registry.hub.docker.com", "docker.io"}
)
"""Docker Hub's API hosts, where an official image goes by two names (`same_repository`)."""
_OFFICIAL = "library/"


class InvalidName(ValueError):
    """A repository name or reference outside the spec's grammar."""


def check_repository(name: str) -> str:
    if len(name) > MAX_NAME_LENGTH or not _NAME.fullmatch(name):
        raise InvalidName(f"invalid repository name {name[:80]!r}")
    return name


def parse_reference(text: str) -> str | Digest:
    """A tag (str) or a digest; InvalidName when it is neither."""
    if ":" in text:
        try:
            return Digest.parse(text)
        except DigestError as e:
            raise InvalidName(str(e)) from e
    if not _TAG.fullmatch(text):
        raise InvalidName(f"invalid tag {text[:80]!r}")
    return text


def same_repository(host: str, repository: str) -> tuple[str, ...]:
    """The names `repository` goes by on `host`: itself, and on Docker Hub, where official
    images live under `library/`, its other form (`library/alpine` and `alpine`: clients
    add the prefix, but Hub answers, and takes pushes to, the bare name too)."""
    if host not in DOCKER_HUB_HOSTS:
        return (repository,)
    if "/" not in repository:
        return (repository, _OFFICIAL + repository)
    bare = repository.removeprefix(_OFFICIAL)
    if bare != repository and "/" not in bare:
        return (repository, bare)
    return (repository,)


DOCKER_HUB = "docker.io"


@dataclass(frozen=True, slots=True)
class ImageName:
    """A name as people write it (`alpine:3.20`, `ghcr.io/org/app@sha256:…`), with
    docker's defaulting: no registry is Docker Hub, and there a one-part repository is
    an official image under `library/`."""

    domain: str
    repository: str
    tag: str | None = None
    digest: Digest | None = None

    def __str__(self) -> str:
        text = f"{self.domain}/{self.repository}"
        if self.tag is not None:
            text += f":{self.tag}"
        return text if self.digest is None else f"{text}@{self.digest}"


def parse_image(text: str) -> ImageName:
    """`[DOMAIN/]REPOSITORY[:TAG][@DIGEST]`; InvalidName naming what is wrong."""
    rest, _, digest_text = text.strip().partition("@")
    digest = parse_reference(digest_text) if digest_text else None
    if digest is not None and not isinstance(digest, Digest):
        raise InvalidName(f"{text!r}: {digest_text!r} is not a digest")
    first, slash, remainder = rest.partition("/")
    domain = DOCKER_HUB
    if slash and ("." in first or ":" in first or first == "localhost"):
        domain, rest = first.lower(), remainder
    tag: str | None = None
    name, colon, maybe_tag = rest.rpartition(":")
    if colon and "/" not in maybe_tag:
        rest, tag = name, maybe_tag
        if not isinstance(parse_reference(tag), str):
            raise InvalidName(f"{text!r}: invalid tag {tag!r}")
    if domain in DOCKER_HUB_HOSTS:
        domain = DOCKER_HUB
        if "/" not in rest:
            rest = _OFFICIAL + rest
    return ImageName(domain, check_repository(rest), tag, digest)
