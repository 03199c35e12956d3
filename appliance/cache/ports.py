"""The seams the cache depends on, implemented by `store/` and `upstream/`."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from appliance.oci.digest import Digest


class UpstreamUnavailable(RuntimeError):
    """Upstream could not be reached, timed out, or failed TLS: raised by the adapter."""


class UpstreamUnreachable(UpstreamUnavailable):
    """No connection to `host` could be made (DNS, refused, connect timeout): the kind of
    failure that says a registry is down, not that one request went wrong."""

    def __init__(self, message: str, host: str, *, tried: bool = True) -> None:
        super().__init__(message)
        self.host = host
        self.tried = tried
        """False: not even tried, as the host failed moments ago (no new evidence)."""


class UpstreamUntrusted(UpstreamUnavailable):
    """Upstream's TLS certificate did not verify: nothing from it may be cached."""


class UpstreamUnsafe(UpstreamUnavailable):
    """Upstream sent regcache where it must not go (plain HTTP, loopback, a metadata
    service): nothing is known from it, but the registry is not down."""


@dataclass(frozen=True, slots=True)
class BlobRow:
    digest: Digest
    size: int
    media_type: str | None


@dataclass(frozen=True, slots=True)
class TagRow:
    digest: Digest
    media_type: str
    size: int
    validated_s: float


def in_trouble(status: int) -> bool:
    """5xx and 429: upstream is there but cannot say yes or no right now."""
    return status >= 500 or status == 429


class UpstreamReply(Protocol):
    @property
    def status(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]:
        """All of upstream's end-to-end headers, for relaying to the client as they are."""
        ...

    @property
    def digest(self) -> Digest | None:
        """The digest upstream announced (Docker-Content-Digest), if a valid one."""
        ...

    @property
    def length(self) -> int | None:
        """The body's announced length (Content-Length), if any."""
        ...

    @property
    def content_type(self) -> str:
        """As upstream sent it, "" if it did not."""
        ...

    def chunks(self) -> AsyncIterator[bytes]: ...
    async def read(self, limit: int) -> bytes: ...
    def close(self) -> None: ...


class Upstream(Protocol):
    async def fetch(self, method: str, url: str, headers: Mapping[str, str]) -> UpstreamReply:
        """GET or HEAD, redirects followed (the final answer is returned); raises on
        transport or TLS failure."""
        ...

    async def fetch_anonymous(
        self, method: str, url: str, accept: str | None = None
    ) -> UpstreamReply:
        """As a client without credentials would: through an anonymous token if asked,
        never with regcache's own credentials; redirects followed. `accept`: the Accept
        header (default: every manifest type)."""
        ...


class TempFile(Protocol):
    @property
    def path(self) -> Path: ...
    def write(self, chunk: bytes) -> None: ...


class BlobFiles(Protocol):
    def path_for(self, digest: Digest) -> Path: ...
    def size_of(self, digest: Digest) -> int | None: ...
    def create_temp(self) -> TempFile: ...
    async def commit(self, temp: TempFile, digest: Digest) -> Path: ...
    def discard(self, temp: TempFile) -> None: ...


class Replica(Protocol):
    """Where a fill's body goes besides this gateway's disk: the tier shared by several
    gateways (`store.s3`)."""

    async def write(self, body: AsyncIterator[bytes | bytearray]) -> None:
        """Upload `body`, the fill's bytes read as they arrive: it ends only once every
        byte matched the digest and raises if the fill fails, so the shared object is
        made visible only then. Never raises for the tier's own trouble."""
        ...

    def abandon(self) -> None:
        """No body is coming (upstream said no, or could not be reached): let go of what
        was reserved for it."""
        ...


@dataclass(frozen=True, slots=True)
class Shared:
    """What the shared tier has for a blob a gateway is about to fill."""

    reply: UpstreamReply | None
    """Its bytes, as a 200 reply; None: fill from upstream (and hand them to `replica`)."""
    replica: Replica | None = None


class SharedTier(Protocol):
    """Blobs shared by several gateways: below each one's own disk, above upstream."""

    async def find(self, digest: Digest, *, lead: bool = True) -> Shared:
        """The blob's bytes if the tier holds them (after waiting a bounded while for a
        fill of it another gateway leads), else where this gateway's fill is to go. Never
        raises for the tier's own trouble: then the fill goes upstream, unshared.
        `lead=False`: a peer fills it (and shares it); only look."""
        ...

    async def location(self, digest: Digest) -> tuple[str, int] | None:
        """Where a client may fetch the blob itself (a URL valid a while) and its size,
        if the tier sends clients to it and holds the blob; else None (also in trouble)."""
        ...

    def redirected(self) -> None:
        """A client the gate let through was sent to a `location` (counted)."""
        ...

    def distrust(self, digest: Digest) -> None:
        """A body read from the tier did not match its digest: remove it there."""
        ...

    async def manifest(self, digest: Digest) -> tuple[bytes, str] | None:
        """A manifest's bytes and media type if the tier holds them (unverified: the
        caller checks them against `digest`); None if not, or it cannot be asked now."""
        ...

    def share_manifest(self, digest: Digest, body: bytes, media_type: str) -> None:
        """A verified manifest this gateway keeps: for the others too (in the background,
        once: a copy there already stays)."""
        ...


RELAYED = "X-Regcache-Relayed"
"""Sent with every relay (the relaying gateway's name): the owner answers the request
itself, never relaying it on, also when it does not come from a member address. A client
that sends it only keeps its own requests from being relayed."""


class Peers(Protocol):
    """The site's other gateways (`peers`): each cold blob has one owner among the live
    ones, which fills it once for all of them."""

    def owner(self, digest: Digest) -> str | None:
        """The live peer that owns `digest` (its name, `10.0.0.2:443`); None: this
        gateway does, or no peer is up."""
        ...

    async def relay(self, owner: str, url: str, headers: Mapping[str, str]) -> UpstreamReply:
        """GET `url` (a blob's upstream URL) through `owner`, as its client would, with
        the client's headers. UpstreamUnavailable when the owner could not be asked
        (then it counts as down until a check finds it up)."""
        ...


class SpaceKeeper(Protocol):
    """Keeps the store within its bounds (the evictor)."""

    def nudge(self, *, added: int = 0, urgent: bool = False) -> None:
        """`added` bytes were stored (or none): check usage soon; `urgent` when a write
        failed for lack of space."""
        ...

    async def hold(self, size: int) -> bool:
        """Room under the bound for `size` more bytes a fill is about to write: True once
        held (eviction may make room first), False if there is none to be had."""
        ...

    def release(self, size: int) -> None:
        """A fill's held bytes are indexed (counted as stored) or gone."""
        ...


class Unbounded:
    """A `SpaceKeeper` with no bound (tests, tools): every hold granted."""

    def nudge(self, *, added: int = 0, urgent: bool = False) -> None:
        pass

    async def hold(self, size: int) -> bool:
        return True

    def release(self, size: int) -> None:
        pass


class AccessRecords(Protocol):
    """What the index knows that the access gate needs after a restart."""

    async def public_status(self, registry: str, repository: str) -> tuple[bool, float] | None:
        """(public, checked at, epoch seconds)."""
        ...

    async def set_public_status(
        self, registry: str, repository: str, public: bool, checked_s: float
    ) -> None:
        """Remember a repository found anonymously readable; `public=False` forgets it."""
        ...

    async def member_paths(
        self, registry: str, repository: str, digest: Digest
    ) -> list[tuple[Digest, ...]]:
        """How the index knows `digest` to be in the repository: `()` if a manifest
        pulled or tagged there is `digest` itself, `(m,)` if such a manifest `m`
        references it, `(m, c)` if `m` references a manifest `c` that does. [] if it does
        not know. References are checked by the caller (the index keeps all of them)."""
        ...

    async def blob(self, digest: Digest) -> BlobRow | None: ...
    async def manifest_type(self, digest: Digest) -> str | None: ...


class Index(Protocol):
    async def add_blob(self, digest: Digest, size: int, media_type: str | None) -> None: ...
    async def add_manifest(
        self,
        digest: Digest,
        size: int,
        media_type: str,
        references: Sequence[Digest],
        source: tuple[str, str],
    ) -> None: ...
    def note_source(self, registry: str, repository: str, digest: Digest) -> None: ...
    def count_served(self, registry: str, from_store: int, from_upstream: int) -> None: ...
    async def blob(self, digest: Digest) -> BlobRow | None: ...
    async def manifest_type(self, digest: Digest) -> str | None: ...
    def touch(self, digest: Digest) -> None: ...
    def known_blob(self, digest: Digest) -> BlobRow | None: ...
    def known_manifest_type(self, digest: Digest) -> str | None: ...
    def known_tag(self, registry: str, repository: str, tag: str, accept: str) -> TagRow | None: ...
    async def tag(self, registry: str, repository: str, tag: str, accept: str) -> TagRow | None: ...
    async def tag_rows(self, registry: str, repository: str, tag: str) -> list[TagRow]: ...
    async def set_tag(
        self, registry: str, repository: str, tag: str, accept: str, row: TagRow
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class MirrorAnswer:
    """What the managed mirror serves for a tag (`mirror/`)."""

    digest: Digest
    network: bool
    """Access `network`: every client regcache admits may have it, with no upstream
    check; False (`upstream`): the access gate decides, as for cached content."""


class MirrorView(Protocol):
    """The managed mirror's mappings as the cache asks about them: memory only, safe from
    any thread (the hit path asks from the serving loops)."""

    def tag(self, host: str, repository: str, tag: str) -> MirrorAnswer | None:
        """The mirrored tag's answer, if `tag` of this repository on `host` is mirrored."""
        ...

    def opens(self, host: str, repository: str, digest: Digest) -> bool:
        """Whether `digest` is content of a network-access entry of this repository (its
        manifests and what they reference), so anyone may have it through that name."""
        ...


class NoMirror:
    """A `MirrorView` with nothing mirrored."""

    def tag(self, host: str, repository: str, tag: str) -> MirrorAnswer | None:
        return None

    def opens(self, host: str, repository: str, digest: Digest) -> bool:
        return False
