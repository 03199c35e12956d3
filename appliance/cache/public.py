"""Which repositories anyone may read: learnt from an anonymous request for a tag a
client was just given (never from an arbitrary digest's 404, issue #13), once per
`public_ttl_s`, and kept in the index so that public images still pull after a restart
during an outage. Only public repositories are kept; what is not known to be public is
not. Memory is bounded; `now_public` is safe from any thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from appliance.cache.ports import AccessRecords, Upstream, UpstreamUnavailable
from appliance.cache.verdicts import shows
from appliance.kit.bounded import BoundedMap
from appliance.kit.logthrottle import LogThrottle
from appliance.kit.singleflight import SingleFlight
from appliance.kit.tasks import spawn
from appliance.oci.digest import Digest

log = logging.getLogger(__name__)

_MAX_REPOSITORIES = 65536
_MAX_PROBES = 64
Repo = tuple[str, str]
"""(registry host, repository)."""


class PublicStatus:
    def __init__(
        self,
        upstream: Upstream,
        records: AccessRecords | None,
        ttl_s: float,
        offline: Callable[[], bool],
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
    ) -> None:
        self._upstream = upstream
        self._records = records
        self._ttl_s = ttl_s
        self._offline = offline
        self._clock = clock
        self._wall_clock = wall_clock
        # repo → (when checked, on the monotonic clock; anonymously readable)
        self._known: BoundedMap[Repo, tuple[float, bool]] = BoundedMap(_MAX_REPOSITORIES)
        # Repositories the index has no public status for (not read again), and reads
        # in flight (concurrent checks wait for the one read rather than skip it).
        self._absent: BoundedMap[Repo, bool] = BoundedMap(_MAX_REPOSITORIES)
        self._reading: SingleFlight[None] = SingleFlight()
        self._probes: set[Repo] = set()
        self._not_saved_log = LogThrottle(log, interval_s=60.0)

    def now_public(self, repo: Repo, now: float) -> bool:
        """Known public within the TTL, from memory only."""
        known = self._known.get(repo)
        return known is not None and known[1] and now - known[0] < self._ttl_s

    async def public_within(self, repo: Repo, now: float, within_s: float) -> bool:
        """Known public, checked at most `within_s` ago (memory, else the index)."""
        if self._known.get(repo) is None and self._records is not None:
            if repo in self._reading:
                await self._reading.join(repo)
            elif repo not in self._absent:
                await self._reading.lead(repo, lambda: self._read(repo, now), _nothing)
        known = self._known.get(repo)
        return known is not None and known[1] and now - known[0] < within_s

    async def _read(self, repo: Repo, now: float) -> None:
        assert self._records is not None
        row = await self._records.public_status(*repo)
        if row is not None and row[0]:
            if self._known.get(repo) is None:
                age_s = max(0.0, self._wall_clock() - row[1])  # to the monotonic clock
                self._remember(repo, (now - age_s, True))
        else:
            self._absent.set(repo, True)

    def learn_soon(self, repo: Repo, tag_url: str, digest: Digest, accept: str) -> None:
        """A client was just given `digest` for a tag of `repo`: find out in the
        background whether anyone may read it, unless that is known from the last
        `ttl_s`. `accept`: the client's, so that the same manifest is negotiated."""
        known = self._known.get(repo)
        fresh = known is not None and self._clock() - known[0] < self._ttl_s
        if fresh or repo in self._probes or len(self._probes) >= _MAX_PROBES or self._offline():
            return
        self._probes.add(repo)
        task = spawn(
            self._probe(repo, tag_url, digest, accept), name=f"access-probe {repo[0]}/{repo[1]}"
        )
        task.add_done_callback(lambda _t: self._probes.discard(repo))

    def _remember(self, repo: Repo, entry: tuple[float, bool]) -> None:
        self._absent.pop(repo)
        self._known.set(repo, entry)

    async def _probe(self, repo: Repo, tag_url: str, digest: Digest, accept: str) -> None:
        """Whether regcache itself, without credentials, is given the same digest for the
        tag (a login page's 200 after a redirect is not that); upstream's trouble
        decides nothing."""
        now = self._clock()
        if await self.public_within(repo, now, self._ttl_s):
            return  # known from before a restart
        try:
            reply = await self._upstream.fetch_anonymous("HEAD", tag_url, accept or None)
        except UpstreamUnavailable:
            return
        reply.close()
        if 200 <= reply.status < 300:
            if not shows(reply, digest, None):
                return
            public = True
        elif reply.status in (401, 403, 404):
            public = False  # the client just got this tag: anonymous is refused it
        else:
            return
        self._remember(repo, (now, public))
        log.info("access probed host=%s repository=%s anonymous_status=%d", *repo, reply.status)
        if self._records is not None:
            try:
                await self._records.set_public_status(*repo, public, self._wall_clock())
            except Exception as e:  # noqa: BLE001 - a full disk: kept in memory meanwhile
                # Never the request's failure (this runs beside it); once a minute, not
                # once per repository, while the disk stays full.
                self._not_saved_log.warning(
                    "not-saved", "access public-status-not-saved host=%s error=%s", repo[0], e
                )


def _nothing(_result: None) -> None:
    return None
