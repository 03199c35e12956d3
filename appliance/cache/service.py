"""Registry semantics: what to answer for a manifest or blob request, and from where.

- By digest, from the store with no upstream call when present.
- Tags are revalidated with an upstream HEAD (free on Docker Hub); the body comes from
  the store when the digest HEAD names is there. A client HEAD never becomes an upstream
  GET. A cached manifest goes only to clients whose Accept takes its media type.
- Misses are fetched once per digest (see fill.py) and verified before they are kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from appliance.cache.access import AccessGate, Refused
from appliance.cache.fill import NO_SPACE, Fill, Fills
from appliance.cache.negative import NegativeCache
from appliance.cache.ports import (
    BlobFiles,
    BlobRow,
    Index,
    SpaceKeeper,
    TagRow,
    Upstream,
    UpstreamReply,
    UpstreamUnavailable,
)
from appliance.cache.verdicts import shows
from appliance.logthrottle import LogThrottle
from appliance.oci.digest import Digest, DigestError
from appliance.oci.manifest import references
from appliance.oci.mediatypes import OCTET_STREAM, accept_key, accepts

log = logging.getLogger(__name__)

MAX_MANIFEST_BYTES = 4 << 20  # distribution's own limit
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

    @property
    def authorization(self) -> str | None:
        return self.headers.get("Authorization")

    @property
    def host(self) -> str:
        """Keys every cache and check: `eu.gcr.io/x` and `gcr.io/x` are different images."""
        return self.origin.removeprefix("https://")

    def url(self, kind: str, reference: str | Digest) -> str:
        return f"{self.origin}/v2/{self.repository}/{kind}/{reference}"


@dataclass(frozen=True, slots=True)
class Stored:
    digest: Digest
    size: int
    media_type: str
    path: Path
    stale: bool = False
    """A tag answered from its last mapping because upstream could not be asked."""


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


Answer = Stored | Filling | Described | Relayed | Refused


class RegistryCache:
    def __init__(
        self,
        files: BlobFiles,
        index: Index,
        upstream: Upstream,
        gate: AccessGate,
        negative: NegativeCache | None = None,
        max_fills: int = 256,
        clock: Callable[[], float] = time.time,
        space: SpaceKeeper | None = None,
        on_fill_finished: Callable[[str, float], None] = lambda _state, _s: None,
    ) -> None:
        self._negative = negative or NegativeCache(0)
        self._files = files
        self._index = index
        self._upstream = upstream
        self._gate = gate
        self._clock = clock
        self._space = space
        self._fills = Fills(
            files,
            self._on_blob_commit,
            max_fills,
            self._on_disk_full,
            lambda fill, seconds: on_fill_finished(fill.state.value, seconds),
        )
        self._manifest_fetches: dict[str, asyncio.Future[Stored | None]] = {}
        self._stale_log = LogThrottle(log, interval_s=3600.0)
        self._full_log = LogThrottle(log, interval_s=60.0)

    async def _on_blob_commit(self, fill: Fill) -> None:
        await self._index.add_blob(fill.digest, fill.written, fill.media_type)
        if self._space is not None:
            self._space.nudge(added=fill.written)

    def _on_disk_full(self, fill: Fill | None, error: OSError) -> None:
        """A write found no space: serve without keeping, log once a minute, make room."""
        self._full_log.warning(
            "disk-full",
            "store disk-full digest=%s error=%s action=streaming-through-uncached",
            fill.digest if fill is not None else "-",
            error.strerror or error,
        )
        if self._space is not None:
            self._space.nudge(urgent=True)

    @property
    def coalesced(self) -> int:
        """Requests that joined another request's fill instead of fetching."""
        return self._fills.joined

    def filling(self) -> set[str]:
        """Digests of fills in flight (eviction leaves them alone)."""
        return self._fills.running()

    def count_served(self, host: str, from_store: int, from_upstream: int) -> None:
        self._index.count_served(host, from_store, from_upstream)

    # Blobs

    async def blob(self, target: Target, digest: Digest, *, head: bool) -> Answer:
        stored = await self._stored(digest, OCTET_STREAM)
        if stored is not None:
            answer = await self._gated(target, stored, stored.size, manifest=False)
            if isinstance(answer, Stored):  # only now: nothing is recorded for a refusal
                self._index.touch(digest)
            return answer
        running = self._fills.active(digest)
        url = target.url("blobs", digest)
        if head:
            if running is not None and running.done() and not running.exception():
                fill = running.result()
                if fill.size is not None:
                    described = Described(digest, fill.size, OCTET_STREAM)
                    return await self._gated(target, described, fill.size, manifest=False)
            reply = await self._fetch_as_client(target, "HEAD", url, digest, manifest=False)
            return await _refusal_or_relayed(reply)
        led = False

        async def fetch() -> UpstreamReply:
            nonlocal led
            led = True
            return await self._fetch_as_client(target, "GET", url, digest, manifest=False)

        result = await self._fills.join_or_start(digest, fetch, media_type=None)
        if not isinstance(result, Fill):
            return await _refusal_or_relayed(result)
        filling = Filling(digest, OCTET_STREAM, result)
        if not led:  # another client's fill: this one must be entitled to it too
            return await self._gated(target, filling, result.size, manifest=False)
        # Upstream's answer to this very request: it needs no gate. Once its bytes check
        # out, the digest is this client's through this repository.
        result.when_verified(
            lambda: self._gate.grant(target.host, target.repository, digest, target.authorization)
        )
        return filling

    async def _fetch_as_client(
        self, target: Target, method: str, url: str, digest: Digest | None, *, manifest: bool
    ) -> UpstreamReply:
        """Upstream with the client's credentials. A 200 to a HEAD by digest that shows
        the digest confirms it for the client. A manifest 404 is remembered for a short
        while (per credential) and replayed; blob 404s are not, since pushes ask for
        blobs just before uploading them."""
        key = self._negative_key(target, method, url)
        remembered = self._negative.get(key)
        if remembered is not None:
            return remembered
        if (down := self._gate.down(target.host)) is not None:
            raise down  # unreachable moments ago, for the gate as for this
        try:
            reply = await self._upstream.fetch(method, url, target.headers)
        except UpstreamUnavailable as e:
            self._gate.note_down(target.host, e)
            raise
        if manifest:
            reply = await self._negative.remember(key, reply)
        if (
            reply.status == 200
            and method == "HEAD"
            and digest is not None
            and shows(reply.headers, digest, None)
        ):
            self._gate.grant(target.host, target.repository, digest, target.authorization)
        return reply

    def _negative_key(self, target: Target, method: str, url: str) -> tuple[str, ...]:
        """Remembered 404s are per request, credential and Accept set."""
        fingerprint = self._gate.fingerprint(target.authorization)
        return (method, url, fingerprint, accept_key(target.accept))

    async def _gated(
        self,
        target: Target,
        answer: Stored | Filling | Described,
        size: int | None,
        *,
        manifest: bool,
    ) -> Answer:
        """`answer` if the client may have it, else upstream's refusal."""
        kind = "manifests" if manifest else "blobs"
        refusal = await self._gate.check(
            target.host, target.repository, answer.digest,
            url=target.url(kind, answer.digest),
            authorization=target.authorization,
            manifest=manifest, size=size,
        )  # fmt: skip
        return answer if refusal is None else refusal

    async def _stored(self, digest: Digest, default_type: str) -> Stored | None:
        return self._stored_now(digest, await self._index.blob(digest), default_type)

    # Hits from memory, for other threads

    def stored_now(
        self, target: Target, reference: str | Digest, *, manifest: bool
    ) -> Stored | None:
        """The answer `blob()`/`manifest()` would give when it is a hit needing no I/O
        but a stat — a digest this process has in memory, or a tag within its TTL, that
        the access gate already vouches for, for this client — else None: ask them. Safe
        from any thread; report the hit with `note_hit` on the cache's loop."""
        stored = self._known(target, reference, manifest=manifest)
        if stored is None:
            return None
        if not self._gate.vouches(
            target.host, target.repository, stored.digest, target.authorization
        ):
            return None
        return stored

    def _known(self, target: Target, reference: str | Digest, *, manifest: bool) -> Stored | None:
        if not manifest:
            assert isinstance(reference, Digest)
            return self._stored_now(reference, self._index.known_blob(reference), OCTET_STREAM)
        if isinstance(reference, Digest):
            digest = reference
        else:
            key = accept_key(target.accept)
            row = self._index.known_tag(target.host, target.repository, reference, key)
            if row is None or self._clock() - row.validated_s >= target.tag_ttl_s:
                return None
            digest = row.digest
        media_type = self._index.known_manifest_type(digest)
        if media_type is None:
            return None
        stored = self._stored_now(digest, self._index.known_blob(digest), media_type)
        by_tag = not isinstance(reference, Digest)
        if stored is None or (by_tag and not accepts(target.accept, stored.media_type)):
            return None
        return stored

    def _stored_now(self, digest: Digest, row: BlobRow | None, default_type: str) -> Stored | None:
        if row is None or self._files.size_of(digest) != row.size:
            return None
        return Stored(
            digest, row.size, row.media_type or default_type, self._files.path_for(digest)
        )

    def note_hit(self, target: Target, stored: Stored, *, manifest: bool) -> None:
        """What `blob()`/`manifest()` record for a hit, for one `stored_now` answered."""
        self._index.touch(stored.digest)
        if manifest:
            self._index.note_source(target.host, target.repository, stored.digest)

    # Manifests

    async def manifest(self, target: Target, reference: str | Digest, *, head: bool) -> Answer:
        answer = await self._manifest(target, reference, head=head)
        if isinstance(answer, Relayed):
            return await _refusal_or_relayed(answer.reply)
        if isinstance(answer, Refused | Filling):
            return answer
        # A manifest 404 is replayed from memory when the digest is absent (see
        # `_fetch_as_client`); a refusal of a stored one is remembered and replayed the
        # same way, so neither differs from the other, also while upstream is down.
        key = self._negative_key(
            target, "HEAD" if head else "GET", target.url("manifests", answer.digest)
        )
        if (remembered := self._negative.get(key)) is not None:
            return await _refusal_or_relayed(remembered)
        gated = await self._gated(target, answer, answer.size, manifest=True)
        if isinstance(gated, Refused) and gated.status == 404:
            self._negative.remember_refusal(key, gated.headers)
        if isinstance(gated, Stored):  # only now: nothing is recorded for a refused client
            self._index.touch(gated.digest)
            self._index.note_source(target.host, target.repository, gated.digest)
        return gated

    async def _manifest(self, target: Target, reference: str | Digest, *, head: bool) -> Answer:
        if isinstance(reference, Digest):
            stored = await self._stored_manifest(reference)
            if stored is not None:
                return stored
            if head:
                url = target.url("manifests", reference)
                reply = await self._fetch_as_client(target, "HEAD", url, reference, manifest=True)
                return Relayed(reply)
            return await self._fetch_manifest(target, reference, tag=None)
        return await self._tag(target, reference, head=head)

    async def _stored_manifest(self, digest: Digest) -> Stored | None:
        media_type = await self._index.manifest_type(digest)
        return None if media_type is None else await self._stored(digest, media_type)

    async def _tag(self, target: Target, tag: str, *, head: bool) -> Answer:
        key = accept_key(target.accept)
        now = self._clock()
        row = await self._index.tag(target.host, target.repository, tag, key)
        if row is not None and now - row.validated_s < target.tag_ttl_s:
            stored = await self._stored_manifest(row.digest)
            # Only for a client already vouched for: any other is asked about the tag
            # itself, as it would be for a tag regcache does not hold.
            vouched = self._gate.vouches(
                target.host, target.repository, row.digest, target.authorization
            )
            if vouched and stored is not None and accepts(target.accept, stored.media_type):
                return stored
        url = target.url("manifests", tag)
        try:
            reply = await self._fetch_as_client(target, "HEAD", url, None, manifest=True)
        except UpstreamUnavailable as e:
            stale = await self._stale(target, tag, now, str(e))
            if stale is None:
                raise
            return stale
        if reply.status >= 500 or reply.status == 429:
            stale = await self._stale(target, tag, now, f"HEAD answered {reply.status}")
            if stale is not None:
                reply.close()
                return stale
        digest = _digest_header(reply.headers)
        if reply.status == 200 and digest is not None:
            size, media_type = _length(reply.headers), reply.headers.get("Content-Type", "")
            reply.close()
            # Upstream just resolved the tag for this client: the digest is theirs here.
            self._gate.grant(target.host, target.repository, digest, target.authorization)
            accept = ", ".join(v for k, v in target.headers.items() if k.lower() == "accept")
            self._gate.learn_public_soon(target.host, target.repository, url, digest, accept)
            stored = await self._stored_manifest(digest)
            if stored is not None and accepts(target.accept, stored.media_type):
                await self._record(
                    "tag",
                    self._index.set_tag(
                        target.host, target.repository, tag, key,
                        TagRow(digest, stored.media_type, stored.size, now),
                    ),
                )  # fmt: skip
                return stored
            if head:
                return Described(digest, size, media_type)
            return await self._fetch_manifest(target, digest, tag=tag)
        if head:
            return Relayed(reply)
        reply.close()
        # No usable HEAD (an auth challenge, an error, no digest): the GET tells the client.
        return await self._fetch_manifest(target, tag, tag=tag)

    async def _stale(self, target: Target, tag: str, now: float, why: str) -> Stored | None:
        """The tag's last validated manifest this client accepts, if upstream being down
        allows it (whatever Accept set it was first fetched for)."""
        for row in await self._index.tag_rows(target.host, target.repository, tag):
            if now - row.validated_s > target.max_stale_s:
                break
            stored = await self._stored_manifest(row.digest)
            if stored is None or not accepts(target.accept, stored.media_type):
                continue
            self._stale_log.warning(
                f"{target.host}/{target.repository}",
                "tag serving-stale host=%s repository=%s age_s=%d reason=%s",
                target.host, target.repository, now - row.validated_s, why,
            )  # fmt: skip
            return replace(stored, stale=True)
        return None

    async def _fetch_manifest(
        self, target: Target, reference: str | Digest, tag: str | None
    ) -> Answer:
        """GET a manifest upstream and keep it; concurrent GETs of one digest share one."""
        if not isinstance(reference, Digest):
            return await self._tagged(target, tag, await self._get_manifest(target, reference))
        key = target.url("manifests", reference)
        running = self._manifest_fetches.get(key)
        if running is not None and (shared := await asyncio.shield(running)) is not None:
            return await self._tagged(target, tag, shared)
        # None from a leader means it got no manifest (its credentials?): ask with ours.
        future: asyncio.Future[Stored | None] = asyncio.get_running_loop().create_future()
        self._manifest_fetches[key] = future
        answer: Answer | None = None
        try:
            answer = await self._get_manifest(target, reference)
        finally:
            future.set_result(answer if isinstance(answer, Stored) else None)
            if self._manifest_fetches.get(key) is future:
                del self._manifest_fetches[key]
        return await self._tagged(target, tag, answer)

    async def _tagged(self, target: Target, tag: str | None, answer: Answer) -> Answer:
        """Record `tag` → the manifest just stored (other answers pass unchanged)."""
        if tag is not None and isinstance(answer, Stored):
            await self._record(
                "tag",
                self._index.set_tag(
                    target.host, target.repository, tag, accept_key(target.accept),
                    TagRow(answer.digest, answer.media_type, answer.size, self._clock()),
                ),
            )  # fmt: skip
        return answer

    async def _record(self, what: str, write: Awaitable[None]) -> None:
        """An index write the answer does not depend on: if it fails (a full disk), the
        client is served anyway and the failure logged. A tag not recorded is revalidated
        next time; a manifest not indexed is fetched again."""
        try:
            await write
        except Exception as e:  # noqa: BLE001 - whatever the index adapter raised
            self._full_log.warning("index", "index write-failed what=%s error=%s", what, e)

    async def _get_manifest(self, target: Target, reference: str | Digest) -> Answer:
        url = target.url("manifests", reference)
        reply = await self._fetch_as_client(target, "GET", url, None, manifest=True)
        if reply.status != 200:
            return Relayed(reply)
        try:
            body = await reply.read(MAX_MANIFEST_BYTES)
            announced = _digest_header(reply.headers)
            media_type = _manifest_type(reply.headers.get("Content-Type", ""), body)
        finally:
            reply.close()
        expected = reference if isinstance(reference, Digest) else announced
        digest = Digest.of(body, expected.algorithm if expected else "sha256")
        if expected is not None and digest != expected:
            raise UpstreamMismatch(f"{url}: manifest hashes to {digest}, expected {expected}")
        if (
            announced is not None
            and announced != digest
            and announced.algorithm == digest.algorithm
        ):
            raise UpstreamMismatch(f"{url}: Docker-Content-Digest {announced} but body is {digest}")
        self._gate.grant(
            target.host, target.repository, digest, target.authorization, body, media_type
        )
        try:
            path = await self._write(digest, body)
        except OSError as e:
            if e.errno not in NO_SPACE:
                raise
            self._on_disk_full(None, e)
            return Relayed(InMemoryReply(body, digest, media_type))
        await self._record(
            "manifest",
            self._index.add_manifest(
                digest, len(body), media_type, references(body), (target.host, target.repository)
            ),
        )
        if self._space is not None:
            self._space.nudge(added=len(body))
        log.info("manifest stored digest=%s type=%s bytes=%d", digest, media_type, len(body))
        return Stored(digest, len(body), media_type, path)

    async def _write(self, digest: Digest, body: bytes) -> Path:
        temp = self._files.create_temp()
        try:
            temp.write(body)
        except BaseException:
            self._files.discard(temp)
            raise
        return await self._files.commit(temp, digest)


class InMemoryReply:
    """A manifest fetched but not kept (the disk is full), answered as upstream sent it."""

    status = 200

    def __init__(self, body: bytes, digest: Digest, media_type: str) -> None:
        self._body = body
        self.headers = {
            "Content-Type": media_type,
            "Content-Length": str(len(body)),
            "Docker-Content-Digest": str(digest),
            "Docker-Distribution-API-Version": "registry/2.0",
        }

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self._body

    async def read(self, limit: int) -> bytes:
        return self._body[:limit]

    def close(self) -> None:
        pass


def _digest_header(headers: Mapping[str, str]) -> Digest | None:
    value = headers.get("Docker-Content-Digest")
    if not value:
        return None
    try:
        return Digest.parse(value.strip())
    except DigestError:
        return None


def _length(headers: Mapping[str, str]) -> int:
    value = headers.get("Content-Length", "")
    return int(value) if value.isdigit() else 0


def _manifest_type(content_type: str, body: bytes) -> str:
    """The Content-Type upstream sent, else the manifest's own `mediaType` field."""
    media_type = content_type.split(";", 1)[0].strip()
    if media_type and media_type not in ("application/json", OCTET_STREAM):
        return media_type
    try:
        declared = json.loads(body).get("mediaType")
    except (ValueError, AttributeError, RecursionError):
        declared = None
    return str(declared) if declared else media_type or "application/json"


async def _refusal_or_relayed(reply: UpstreamReply) -> Refused | Relayed:
    """Upstream's 4xx and 5xx as a `Refused` (rendered the same way as the gate's, so the
    answer does not tell whether the content is stored); others as they are."""
    if reply.status < 400:
        return Relayed(reply)
    # Read to the end so the connection can be reused; if that fails, it is closed.
    with contextlib.suppress(UpstreamUnavailable):
        await reply.read(_REFUSAL_BODY_BYTES)
    reply.close()
    return Refused.of(reply.status, reply.headers)
