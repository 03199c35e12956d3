"""What the cache answers a manifest or blob request with, and the request it answers:
the vocabulary between `proxy/` and the cache, with no HTTP objects."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from appliance.cache.fill import Fill
from appliance.cache.ports import UpstreamReply, UpstreamUnavailable
from appliance.oci.digest import Digest
from appliance.oci.headers import Announced
from appliance.oci.routes import Kind

_REFUSAL_BODY_BYTES = 64 * 1024


class UpstreamMismatch(RuntimeError):
    """Upstream's bytes do not match the digest they were asked for or announced."""


@dataclass(frozen=True, slots=True)
class Target:
    """One client request as the cache sees it: no HTTP objects."""

    origin: str
    """Upstream base URL, `https://registry-1.docker.io`."""
    repository: str
    headers: Mapping[str, str]
    """The client's end-to-end headers, sent upstream as they are (Authorization, Accept)."""
    accept: frozenset[str]
    tag_ttl_s: float = 0.0
    max_stale_s: float = 0.0
    """How old a tag mapping may be to answer while upstream is down (stale-if-error)."""
    from_peer: bool = False
    """Relayed by another gateway of the site (`peers`): this one answers it itself."""
    realm_down: bool = False
    """The client's token step was answered by regcache (its realm did not answer): it
    comes as an anonymous client, and upstream's 401 to it is trouble, not a no."""

    @property
    def authorization(self) -> str | None:
        return self.headers.get("Authorization")

    @property
    def host(self) -> str:
        """Keys every cache and check: `eu.gcr.io/x` and `gcr.io/x` are different images."""
        return self.origin.removeprefix("https://")

    def url(self, kind: Kind, reference: str | Digest) -> str:
        return f"{self.origin}/v2/{self.repository}/{kind.value}/{reference}"


@dataclass(frozen=True, slots=True)
class Stored:
    digest: Digest
    size: int
    media_type: str
    path: Path
    stale: bool = False
    """A tag answered from its last mapping because upstream could not be asked."""
    fetched: bool = False
    """Its bytes were fetched from upstream for this answer (and stored on the way): a
    miss, though sent from the file. Every count of hits (metrics, bytes from the
    store, the audit log, the index's hit counts) reads it from here."""


@dataclass(frozen=True, slots=True)
class Filling:
    digest: Digest
    media_type: str
    fill: Fill


@dataclass(frozen=True, slots=True)
class Described:
    """A HEAD answer: what the body would be, without it."""

    digest: Digest
    size: int
    media_type: str


@dataclass(frozen=True, slots=True)
class Relayed:
    """Upstream's own response, for the client as it is (an auth challenge, a 404…)."""

    reply: UpstreamReply


@dataclass(frozen=True, slots=True)
class Refused:
    """Upstream's no (or its trouble: 5xx, 429) for a manifest or blob, as the client will
    get it: the status, its challenge and Retry-After, nothing else, so the answer looks
    the same whether the content is in the store or not (THREAT_MODEL.md)."""

    status: int
    challenge: str | None = None
    retry_after: str | None = None
    """Upstream's Retry-After, for its 429 and 503."""

    @classmethod
    def of(cls, status: int, headers: Mapping[str, str]) -> Refused:
        """From upstream's answer (`headers` matching names case-insensitively)."""
        return cls(status, headers.get("WWW-Authenticate"), headers.get("Retry-After"))

    @property
    def headers(self) -> dict[str, str]:
        """What goes to the client besides the status and the error body."""
        fields = {"WWW-Authenticate": self.challenge, "Retry-After": self.retry_after}
        return {name: value for name, value in fields.items() if value is not None}


@dataclass(frozen=True, slots=True)
class Redirected:
    """The blob is in the shared tier, which the client fetches it from (`location`)."""

    digest: Digest
    size: int
    location: str


Answer = Stored | Filling | Described | Redirected | Relayed | Refused


@dataclass(frozen=True, slots=True)
class MemoryReply(Announced):
    """An upstream response held in memory, replayable any number of times: a remembered
    404, or a manifest fetched but not kept (the disk is full)."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    @classmethod
    def manifest(cls, body: bytes, digest: Digest, media_type: str) -> MemoryReply:
        headers = {
            "Content-Type": media_type,
            "Content-Length": str(len(body)),
            "Docker-Content-Digest": str(digest),
            "Docker-Distribution-API-Version": "registry/2.0",
        }
        return cls(200, headers, body)

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self.body

    async def read(self, limit: int) -> bytes:
        return self.body[:limit]

    def close(self) -> None:
        return None


async def refusal_or_relayed(reply: UpstreamReply) -> Refused | Relayed:
    """Upstream's 4xx and 5xx as a `Refused` (rendered the same way as the gate's, so the
    answer does not tell whether the content is stored); others as they are."""
    if reply.status < 400:
        return Relayed(reply)
    # Read to the end so the connection can be reused; if that fails, it is closed.
    with contextlib.suppress(UpstreamUnavailable):
        await reply.read(_REFUSAL_BODY_BYTES)
    reply.close()
    return Refused.of(reply.status, reply.headers)
