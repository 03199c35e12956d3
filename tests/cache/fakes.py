"""A scripted upstream (our own `Upstream` port faked) for cache tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

from multidict import CIMultiDict

from appliance.cache.fill import Fill, FillFailed, FillState
from appliance.cache.ports import Shared, UpstreamUnreachable
from appliance.oci.digest import Digest
from appliance.oci.headers import Announced


@dataclass
class FakeReply(Announced):
    status: int
    headers: CIMultiDict[str]
    body: bytes = b""
    gate: asyncio.Event | None = None
    """When set, the body stops after its first chunk until the gate opens."""
    fails: BaseException | None = None
    """When set, raised where the second chunk would come (a connection reset)."""
    closed: bool = False

    async def chunks(self) -> AsyncIterator[bytes]:
        half = len(self.body) // 2
        yield self.body[:half]
        if self.gate is not None:
            await self.gate.wait()
        if self.fails is not None:
            raise self.fails
        yield self.body[half:]

    async def read(self, limit: int) -> bytes:
        return b"".join([c async for c in self.chunks()])

    def close(self) -> None:
        self.closed = True


@dataclass
class FakeUpstream:
    routes: dict[tuple[str, str, str | None], FakeReply] = field(default_factory=dict)
    calls: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    answer_gate: asyncio.Event | None = None
    """When set, every fetch waits for it before answering."""
    unreachable: set[str] = field(default_factory=set)
    """Hosts no connection can be made to."""

    def add(
        self,
        method: str,
        url: str,
        status: int,
        body: bytes = b"",
        *,
        auth: str | None = None,
        **headers: str,
    ) -> FakeReply:
        """A scripted reply; with `auth`, only for requests carrying that Authorization
        ("" for requests carrying none)."""
        fields = CIMultiDict({k.replace("_", "-"): v for k, v in headers.items()})
        reply = FakeReply(status, fields, body)
        self.routes[(method, url, auth)] = reply
        return reply

    async def fetch_anonymous(self, method: str, url: str, accept: str | None = None) -> FakeReply:
        return await self.fetch(method, url, {})

    async def fetch(self, method: str, url: str, headers: Mapping[str, str]) -> FakeReply:
        self.calls.append((method, url, dict(headers)))
        await asyncio.sleep(0)
        host = url.split("/")[2]
        if host in self.unreachable:
            raise UpstreamUnreachable(f"{method} {url}: connection refused", host)
        if self.answer_gate is not None:
            await self.answer_gate.wait()
        template = self.routes.get((method, url, headers.get("Authorization") or ""))
        if template is None:
            template = self.routes.get((method, url, None))
        if template is None:
            return FakeReply(404, CIMultiDict())
        return FakeReply(
            template.status, template.headers, template.body, template.gate, template.fails
        )

    def count(self, method: str) -> int:
        return sum(1 for m, _, _ in self.calls if m == method)


# The shared tier (our own `SharedTier` port), for the cache's tests of it.


@dataclass
class FakeReplica:
    tier: FakeTier
    digest: Digest

    async def write(self, body: AsyncIterator[bytes | bytearray]) -> None:
        got = b""
        try:
            async for chunk in body:
                got += chunk
        except FillFailed as e:
            self.tier.dropped.append((self.digest, str(e)))
            return
        self.tier.ended_in.append(self.tier.watching.state if self.tier.watching else None)
        self.tier.objects[self.digest] = got

    def abandon(self) -> None:
        self.tier.abandoned.append(self.digest)


@dataclass
class FakeTier:
    objects: dict[Digest, bytes] = field(default_factory=dict)
    finds: int = 0
    looked: int = 0
    redirect: bool = False
    redirects: int = 0
    """Send clients to the bucket for what it holds (`store.s3.redirect`)."""
    """Finds that only looked (a peer fills the blob)."""
    dropped: list[tuple[Digest, str]] = field(default_factory=list)
    abandoned: list[Digest] = field(default_factory=list)
    distrusted: list[Digest] = field(default_factory=list)
    ended_in: list[FillState | None] = field(default_factory=list)
    watching: Fill | None = None
    manifests: dict[Digest, tuple[bytes, str]] = field(default_factory=dict)
    shared_manifests: list[Digest] = field(default_factory=list)

    async def find(self, digest: Digest, *, lead: bool = True) -> Shared:
        self.finds += 1
        if digest in self.objects:
            body = self.objects[digest]
            headers = CIMultiDict({"Content-Length": str(len(body))})
            return Shared(FakeReply(200, headers, body))
        if not lead:
            self.looked += 1
            return Shared(None)
        return Shared(None, FakeReplica(self, digest))

    async def location(self, digest: Digest) -> tuple[str, int] | None:
        if not self.redirect or digest not in self.objects:
            return None
        return f"https://bucket.example/{digest.hex}?X-Amz-Signature=s", len(self.objects[digest])

    def redirected(self) -> None:
        self.redirects += 1

    def distrust(self, digest: Digest) -> None:
        self.distrusted.append(digest)
        self.objects.pop(digest, None)
        self.manifests.pop(digest, None)

    async def manifest(self, digest: Digest) -> tuple[bytes, str] | None:
        return self.manifests.get(digest)

    def share_manifest(self, digest: Digest, body: bytes, media_type: str) -> None:
        self.shared_manifests.append(digest)
        self.manifests.setdefault(digest, (body, media_type))


async def settled(fill: Fill) -> None:
    """Until `fill` has ended and the replica's task has taken its last bytes (bounded)."""
    for _ in range(300):
        if fill.ended:
            await asyncio.sleep(0.01)
            return
        await asyncio.sleep(0.01)
    raise AssertionError("fill did not end")
