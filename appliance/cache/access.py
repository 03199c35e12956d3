"""Who may be served what the store holds: a verdict per (registry host, repository,
digest, credential), so no private content reaches a client by any name.

The store is shared by digest across repositories, registries and clients. Content from
it — or from a fill another client started — goes to a client asking for
`/v2/<repository>/…/<digest>` on a host only when that digest is known to be readable by
that client through that repository on that host:

- upstream confirmed it for this credential through this repository within
  `verified_ttl_s`: a fill or manifest fetch it made (verified against the digest), a
  tag revalidation naming it, a HEAD by digest answered with it, or the gate's own
  check below. A manifest confirmed this way vouches for what it references (two levels,
  `vouched_references`: never `urls` descriptors), so a pull costs no request per layer;
- or the repository is anonymously readable — learnt from an anonymous request for a tag
  a client just pulled, never from an arbitrary digest's 404 — and the digest is known
  to be in it (confirmed for anyone, or the index's record of what was pulled there);
- otherwise the gate asks: a HEAD of that exact URL with the client's own Authorization,
  redirects followed (with the anonymous token step a redirect target may want). Only a
  final 2xx that shows the same digest (or, from a CDN, the same size) is a yes; a
  redirect by itself proves nothing. An answer that cannot be had (upstream down, 5xx,
  429, offline) is "not known": then only what was confirmed within `outage_grace_s`
  opens the store, and public content (public status kept in the index) also offline,
  for as long as offline lasts.
- or a network-access entry of the managed mirror holds it in that repository (`mirror/`).

A refusal is upstream's status and challenge, rendered like every other refusal (see
`Refused`). Credentials are kept only as keyed fingerprints. Everything is bounded;
nothing is recorded for a refused request.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Literal

from appliance.cache.answers import Refused
from appliance.cache.fingerprint import Fingerprints
from appliance.cache.ports import (
    AccessRecords,
    BlobFiles,
    MirrorView,
    NoMirror,
    Upstream,
    UpstreamUnavailable,
    UpstreamUnreachable,
    UpstreamUnsafe,
    in_trouble,
)
from appliance.cache.public import PublicStatus
from appliance.cache.verdicts import (
    NO_REFS,
    Children,
    Grants,
    Refs,
    shows,
    unknown_children,
    vouched,
)
from appliance.kit.bounded import BoundedMap
from appliance.kit.logfields import fields
from appliance.kit.logthrottle import LogThrottle
from appliance.kit.singleflight import SingleFlight
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import MANIFEST_TYPES

log = logging.getLogger(__name__)

_RETRY_DOWN_HOST_S = 10.0
_MAX_DOWN_HOSTS = 1024
_MAX_CLIENT_KEYS = 16384
_MAX_PER_CLIENT = 32
_MAX_REPOSITORY_KEYS = 16384
_MAX_PER_REPOSITORY = 64
_MAX_MANIFESTS = 16384
_ALL_MANIFEST_TYPES = ", ".join(MANIFEST_TYPES)


_Verdict = Literal[True] | Refused | UpstreamUnavailable
"""Upstream's yes; its refusal or trouble; or the error met asking."""


class AccessGate:
    def __init__(
        self,
        upstream: Upstream,
        records: AccessRecords | None = None,
        files: BlobFiles | None = None,
        *,
        fingerprints: Fingerprints | None = None,
        verified_ttl_s: float = 300.0,
        public_ttl_s: float = 3600.0,
        outage_grace_s: float = 86400.0,
        offline: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        mirror: MirrorView = NoMirror(),  # noqa: B008 - stateless
    ) -> None:
        self._upstream = upstream
        self._mirror = mirror  # what a network-access mirror entry holds opens to anyone
        self._records = records
        self._files = files
        self.fingerprint = fingerprints or Fingerprints(secrets.token_bytes(32))
        self._verified_ttl_s = verified_ttl_s
        self._public_ttl_s = public_ttl_s
        # In an outage, neither counts for less than it would with upstream up.
        self._grant_grace_s = max(outage_grace_s, verified_ttl_s)
        self._public_grace_s = max(outage_grace_s, public_ttl_s)
        self._offline = offline
        self._clock = clock
        self._wall_clock = wall_clock
        self._grants = Grants(_MAX_CLIENT_KEYS, _MAX_PER_CLIENT)
        self._members = Grants(_MAX_REPOSITORY_KEYS, _MAX_PER_REPOSITORY)
        self._children = Children(_MAX_MANIFESTS)
        self._public = PublicStatus(upstream, records, public_ttl_s, offline, clock, wall_clock)
        # Hosts that just failed to answer: not asked again for a while, so an outage
        # with connect timeouts does not cost every request one.
        self._down: BoundedMap[str, str] = BoundedMap(_MAX_DOWN_HOSTS, _RETRY_DOWN_HOST_S, clock)
        self._checks: SingleFlight[_Verdict] = SingleFlight()
        self._refusal_log = LogThrottle(log, interval_s=10.0)
        self._outage_log = LogThrottle(log, interval_s=600.0)

    # Memory only, safe from any thread

    def vouches(
        self, host: str, repository: str, digest: Digest, authorization: str | None
    ) -> bool:
        """Whether what upstream said recently lets this client have `digest` through
        this repository, without asking anything. Never more permissive than `check`;
        False means: ask `check`."""
        if self._mirror.opens(host, repository, digest):
            return True
        now = self._clock()
        client = (host, repository, self.fingerprint(authorization))
        if vouched(self._grants.get(client), digest, self._children, now - self._verified_ttl_s):
            return True
        repo = (host, repository)
        return self._public.now_public(repo, now) and vouched(
            self._members.get(repo), digest, self._children, -math.inf
        )

    # On the cache's loop

    def grant(
        self,
        host: str,
        repository: str,
        digest: Digest,
        authorization: str | None,
        body: bytes | None = None,
        media_type: str | None = None,
    ) -> None:
        """Upstream just gave this client `digest` through this repository (a manifest's
        `body` and type, when at hand, say what it vouches for)."""
        if body is not None:
            self._children.put(digest, Refs.of(body, media_type))
        now = self._clock()
        client = (host, repository, self.fingerprint(authorization))
        # Covered already by a manifest granted with it: no entry (they are bounded).
        covered_since = now - self._verified_ttl_s
        if not vouched(self._grants.get(client), digest, self._children, covered_since):
            self._grants.put(client, digest, now)
        repo = (host, repository)
        if not vouched(self._members.get(repo), digest, self._children, -math.inf):
            self._members.put(repo, digest, now)

    async def check(
        self,
        host: str,
        repository: str,
        digest: Digest,
        *,
        url: str,
        authorization: str | None,
        manifest: bool,
        size: int | None,
        realm_down: bool = False,
    ) -> Refused | None:
        """None when the client may have `digest` from the store (or another client's
        fill) through `url`, else upstream's refusal. Raises UpstreamUnavailable when
        upstream cannot say and nothing confirmed recently enough opens it; a 401 to an
        anonymous client whose token realm is down (`realm_down`) is upstream unable to
        say, as a 503 would be."""
        if self._mirror.opens(host, repository, digest):
            return None
        now = self._clock()
        client = (host, repository, self.fingerprint(authorization))
        repo = (host, repository)
        if await self._granted(client, digest, now - self._verified_ttl_s):
            return None
        if await self._public_member(repo, digest, now, self._public_ttl_s):
            return None
        failure: Refused | UpstreamUnavailable | None = self.down(host)
        if self._offline():
            failure = UpstreamUnavailable(f"{host}: offline mode, upstream is never contacted")
        elif failure is None:
            verdict = await self._shared_check((*client, digest), url, authorization,
                                               manifest, size)  # fmt: skip
            if verdict is True:
                self.grant(host, repository, digest, authorization)
                return None
            if realm_down and isinstance(verdict, Refused) and verdict.status == 401:
                verdict = UpstreamUnavailable(f"{host}: its token realm did not answer")
            if isinstance(verdict, Refused) and not in_trouble(verdict.status):
                self._refusal_log.info(
                    f"{host} {verdict.status}",
                    "access refused %s",
                    fields(
                        host=host,
                        repository=repository,
                        status=verdict.status,
                        credential=client[2][:8] or "none",
                    ),
                )
                return verdict
            failure = verdict
        return await self._not_known(client, repo, digest, now, failure)

    def note_down(self, host: str, error: UpstreamUnavailable) -> None:
        """A request to `host` failed: if no connection to it could be made, it is not
        asked again for a few seconds (an outage with connect timeouts must not cost
        every request one), by the gate or by fills (`down`), alike."""
        if not isinstance(error, UpstreamUnreachable) or error.host != host:
            return  # one request went wrong (or a CDN did): the registry is not down
        if not error.tried:
            return  # the client's own memory refused it: no news (and it may be back)
        self._down.set(host, str(error))

    def down(self, host: str) -> UpstreamUnreachable | None:
        """The error to give for `host` now, if it could not be reached moments ago."""
        down = self._down.get(host)
        return None if down is None else UpstreamUnreachable(down, host)

    def learn_public_soon(
        self, host: str, repository: str, tag_url: str, digest: Digest, accept: str
    ) -> None:
        """A client was just given `digest` for a tag of this repository: learn in the
        background whether anyone may read it (so that new clients get its public content
        while upstream is down)."""
        self._public.learn_soon((host, repository), tag_url, digest, accept)

    # Internals

    async def _granted(self, client: tuple[str, str, str], digest: Digest, since: float) -> bool:
        return await self._vouched_loading(self._grants.get(client), digest, since)

    async def _vouched_loading(
        self, granted: Mapping[Digest, float], digest: Digest, since: float
    ) -> bool:
        """`vouched`, loading from the store what granted manifests reference."""
        for _ in range(2):  # an index's children, then theirs
            if vouched(granted, digest, self._children, since):
                return True
            missing = unknown_children(granted, self._children, since)
            if not missing:
                return False
            loaded = [await self._load_refs(m) for m in missing[:_MAX_PER_REPOSITORY]]
            if not any(loaded):
                return False
        return vouched(granted, digest, self._children, since)

    async def _load_refs(self, digest: Digest) -> bool:
        """Learn what a stored manifest vouches for (a stored blob: nothing); False when
        `digest` is not in the store (yet)."""
        if self._records is None or self._files is None:
            return False
        media_type = await self._records.manifest_type(digest)
        if media_type is None:
            if await self._records.blob(digest) is None:
                return False
            self._children.put(digest, NO_REFS)
            return True
        try:
            body = await asyncio.to_thread(self._files.path_for(digest).read_bytes)
        except OSError:
            return False  # evicted meanwhile
        if Digest.of(body, digest.algorithm) != digest:
            return False  # damaged on disk: vouches for nothing (cache verify will say)
        self._children.put(digest, Refs.of(body, media_type))
        return True

    async def _public_member(
        self, repo: tuple[str, str], digest: Digest, now: float, within_s: float
    ) -> bool:
        """Public within `within_s` and `digest` known to be in the repository."""
        if not await self._public.public_within(repo, now, within_s):
            return False
        if await self._vouched_loading(self._members.get(repo), digest, -math.inf):
            return True
        if self._records is None:
            return False
        for path in await self._records.member_paths(*repo, digest):
            if await self._path_holds(path, digest):
                self._members.put(repo, digest, now)
                return True
        return False

    async def _path_holds(self, path: tuple[Digest, ...], digest: Digest) -> bool:
        """Whether each manifest on `path` vouches for the next, and the last for `digest`."""
        chain = (*path, digest)
        for hop, (parent, child) in enumerate(itertools.pairwise(chain)):
            refs = self._children.get(parent)
            if refs is None and await self._load_refs(parent):
                refs = self._children.get(parent)
            if refs is None or child not in refs.digests:
                return False
            if hop < len(path) - 1 and not refs.manifests:  # only an index names manifests
                return False
        return True

    async def _not_known(
        self,
        client: tuple[str, str, str],
        repo: tuple[str, str],
        digest: Digest,
        now: float,
        failure: Refused | UpstreamUnavailable,
    ) -> Refused | None:
        """Upstream cannot say: what it confirmed within the grace period decides;
        offline, public content is served for as long as offline lasts. Otherwise the
        client gets what upstream's trouble was (its 5xx or 429, or the error raised),
        exactly as it would for content regcache does not hold."""
        offline = self._offline()
        public_s = math.inf if offline else self._public_grace_s
        allowed = await self._granted(client, digest, now - self._grant_grace_s) or (
            await self._public_member(repo, digest, now, public_s)
        )
        self._outage_log.warning(
            f"{repo[0]}/{allowed}",
            "access upstream-unavailable %s",
            fields(host=repo[0], repository=repo[1], offline=offline, allowed=allowed),
        )
        if allowed:
            return None
        if isinstance(failure, Refused):
            return failure
        raise failure

    async def _shared_check(
        self,
        key: tuple[str, str, str, Digest],
        url: str,
        authorization: str | None,
        manifest: bool,
        size: int | None,
    ) -> _Verdict:
        """One upstream check per (host, repository, credential, digest) at a time. A
        leader that failed or was cancelled says nothing about a follower: it asks."""
        shared = await self._checks.join(key)
        if shared is not None:
            return shared
        return await self._checks.lead(
            key,
            lambda: self._ask(key[0], url, authorization, key[3], manifest, size),
            lambda verdict: verdict,
        )

    async def _ask(
        self,
        host: str,
        url: str,
        authorization: str | None,
        digest: Digest,
        manifest: bool,
        size: int | None,
    ) -> _Verdict:
        """True; upstream's refusal (or its trouble: 5xx, 429); or the error met asking."""
        headers = {"Accept": _ALL_MANIFEST_TYPES} if manifest else {}
        if authorization:
            headers["Authorization"] = authorization
        try:
            reply = await self._upstream.fetch("HEAD", url, headers)
        except UpstreamUnsafe as e:
            self._refusal_log.warning(f"unsafe {host}", "access check-refused-target error=%s", e)
            return e  # not known; the registry is not down for it
        except UpstreamUnavailable as e:
            self._outage_log.warning(
                f"ask {host}", "access check-failed host=%s error=%.200s", host, e
            )
            self.note_down(host, e)
            return e
        try:
            status = reply.status
            if 200 <= status < 300:
                return True if shows(reply, digest, size) else Refused(404)
            if 300 <= status < 400:
                return UpstreamUnavailable(f"{url}: answered {status} without a usable Location")
            return Refused.of(status, reply.headers)
        finally:
            reply.close()
