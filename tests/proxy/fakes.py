"""Fakes of the proxy's ports — the cache (`appliance.proxy.app.Cache`) and the
pass-through upstream (`PassThrough`) — scripted by each test, recording what they are
asked."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from multidict import CIMultiDict

from appliance.cache.answers import Answer, Stored, Target
from appliance.cache.fill import FillFailed, FillState
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import OCTET_STREAM
from tests.cache.fakes import FakeReply


def stored(
    directory: Path, data: bytes, media_type: str = OCTET_STREAM, *, stale: bool = False
) -> Stored:
    """A stored blob or manifest: `data` in a real file, as the store would hold it."""
    digest = Digest.of(data)
    path = directory / digest.hex
    path.write_bytes(data)
    return Stored(digest, len(data), media_type, path, stale)


@dataclass
class Asked:
    what: str
    """"blob", "manifest" or "referrers"."""
    target: Target
    reference: str | Digest
    head: bool
    query: str = ""


@dataclass
class FakeCache:
    uploads = None  # pushes only pass through
    """Gives the scripted answers in turn (the last one again and again); an exception
    in the script is raised instead."""

    script: list[Answer | Exception] = field(default_factory=list)
    hit: Stored | None = None
    """What `stored_now` answers: a hit known in memory."""
    asked: list[Asked] = field(default_factory=list)
    noted_hits: list[Stored] = field(default_factory=list)
    served: list[tuple[str, int, int]] = field(default_factory=list)
    writes: list[list[tuple[str, str]]] = field(default_factory=list)
    """The places of each write the proxy reported (`RegistryCache.written`)."""

    def answers(self, *script: Answer | Exception) -> None:
        self.script = list(script)

    def stored_now(
        self, target: Target, reference: str | Digest, *, manifest: bool
    ) -> Stored | None:
        return self.hit

    def note_hit(self, target: Target, stored: Stored, *, manifest: bool) -> None:
        self.noted_hits.append(stored)

    async def blob(self, target: Target, digest: Digest, *, head: bool) -> Answer:
        return self._next(Asked("blob", target, digest, head))

    async def manifest(self, target: Target, reference: str | Digest, *, head: bool) -> Answer:
        return self._next(Asked("manifest", target, reference, head))

    async def referrers(self, target: Target, subject: Digest, query: str) -> Answer:
        return self._next(Asked("referrers", target, subject, False, query))

    def count_served(self, host: str, from_store: int, from_upstream: int) -> None:
        self.served.append((host, from_store, from_upstream))

    async def written(self, places: Sequence[tuple[str, str]]) -> None:
        self.writes.append(list(places))

    def _next(self, asked: Asked) -> Answer:
        self.asked.append(asked)
        answer = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


class FakeFill:
    """A fill in progress (`appliance.cache.fill.Fill` as the proxy reads it): `data` is
    what upstream has sent so far, all of it readable."""

    def __init__(
        self,
        data: bytes,
        size: int | None,
        state: FillState = FillState.FILLING,
        error: BaseException | None = None,
        *,
        gone: bool = False,
    ) -> None:
        self.data = data
        self.size = size
        self.state = state
        self.error = error
        self.gone = gone
        """Its file was evicted after it committed: opening it fails."""
        self.waited = False
        """Whether an answer waited for it to be stored (`wait_stored`)."""

    async def wait_stored(self) -> None:
        """As if the fill completed meanwhile (unless it is scripted as failed)."""
        self.waited = True
        if self.state is FillState.FAILED:
            raise FillFailed(str(self.error))
        if self.error is not None:  # scripted for the wait alone (NotKept)
            raise self.error
        self.state = FillState.DONE

    async def opened(self, start: int, stop: int, take: int) -> AsyncGenerator[bytes, None]:
        if self.gone:
            raise FileNotFoundError(2, "No such file or directory")
        return self.stream(start, stop, take)

    async def stream(self, start: int, stop: int, take: int) -> AsyncGenerator[bytes, None]:
        if self.gone:
            raise FileNotFoundError(2, "No such file or directory")
        for pos in range(start, min(stop, len(self.data)), take):
            yield self.data[pos : min(pos + take, stop)]


@dataclass
class Sent:
    method: str
    url: str
    headers: CIMultiDict[str]
    body: bytes | None


@dataclass
class FakePassThrough:
    """Upstream for pass-through traffic: scripted replies by (method, URL), 404 for the
    rest; a scripted exception is raised (an unreachable or untrusted upstream)."""

    replies: dict[tuple[str, str], FakeReply | Exception] = field(default_factory=dict)
    sent: list[Sent] = field(default_factory=list)
    given: list[FakeReply] = field(default_factory=list)

    def add(self, method: str, url: str, status: int, body: bytes = b"", **headers: str) -> None:
        fields = CIMultiDict({k.replace("_", "-"): v for k, v in headers.items()})
        self.replies[(method, url)] = FakeReply(status, fields, body)

    def fail(self, method: str, url: str, error: Exception) -> None:
        self.replies[(method, url)] = error

    async def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: AsyncIterator[bytes] | None = None,
    ) -> FakeReply:
        received = None if body is None else b"".join([chunk async for chunk in body])
        self.sent.append(Sent(method, url, CIMultiDict(headers), received))
        template = self.replies.get((method, url), FakeReply(404, CIMultiDict()))
        if isinstance(template, Exception):
            raise template
        reply = FakeReply(template.status, template.headers, template.body)
        self.given.append(reply)
        return reply
