"""What the local registry keeps in the index (implemented by `store/localstate.py`) and
the errors it answers with."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from appliance.oci.digest import Digest


class LocalError(Exception):
    """A registry error answer: HTTP status, the distribution-spec error code, a message
    for people, and headers the answer must carry (a challenge, a Range)."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.headers = headers or {}


@dataclass(frozen=True, slots=True)
class LocalManifest:
    """A manifest pushed to a local repository."""

    digest: Digest
    media_type: str
    size: int
    artifact_type: str | None = None
    """For the referrers API: the manifest's `artifactType`, else its config's type."""
    annotations: str | None = None
    """Its `annotations`, as JSON text (the referrers API returns them)."""
    subject: Digest | None = None


@dataclass(frozen=True, slots=True)
class LocalUsage:
    repositories: int
    manifests: int
    tags: int
    blobs: int
    bytes: int
    """Blobs and manifests of the local registry, each digest once."""


class LocalReplica(Protocol):
    """Where the local registry's changes go besides this gateway's index: the bucket
    several gateways share (`store/sharedlocal.py`). Told, never waited for."""

    def changed(self) -> None:
        """A manifest was pushed here."""
        ...

    def tag_deleted(self, repository: str, tag: str) -> None: ...

    def manifest_deleted(self, repository: str, digest: Digest, tags: Iterable[str]) -> None:
        """The manifest is gone from the repository, with `tags`, which named it."""
        ...


class LocalIndex(Protocol):
    async def local_blob(self, repository: str, digest: Digest) -> int | None:
        """The blob's size, if it was pushed (or mounted) into the repository."""
        ...

    async def add_local_blob(self, repository: str, digest: Digest, size: int) -> None:
        """A blob stored (its file committed) now belongs to the repository."""
        ...

    async def delete_local_blob(self, repository: str, digest: Digest) -> bool: ...
    async def local_manifest(self, repository: str, digest: Digest) -> LocalManifest | None: ...
    async def local_tag(self, repository: str, tag: str) -> Digest | None: ...

    async def put_local_manifest(
        self,
        repository: str,
        manifest: LocalManifest,
        references: Sequence[Digest],
        tag: str | None,
        source: str,
    ) -> None:
        """Store a manifest's rows (its file is committed), tagged if `tag`; `source` is
        the registry name `cache ls` shows it under."""
        ...

    async def delete_local_manifest(
        self, repository: str, digest: Digest, source: str
    ) -> list[str] | None:
        """Remove the manifest from the repository with the tags naming it (and its
        `source` row); the tags removed (None if it was not there)."""
        ...

    async def delete_local_tag(self, repository: str, tag: str) -> bool: ...
    async def local_tags(self, repository: str) -> list[str] | None:
        """Every tag, sorted; None if the repository holds nothing at all."""
        ...

    async def local_referrers(self, repository: str, subject: Digest) -> list[LocalManifest]: ...
    async def local_repositories(self) -> list[str]: ...
    async def local_usage(self) -> LocalUsage: ...
