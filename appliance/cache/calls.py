"""Upstream asked as the client (its own credentials), with remembered 404s, and the
access gate asked for content that came from anywhere else."""

from __future__ import annotations

from collections.abc import Collection

from appliance.cache.access import AccessGate
from appliance.cache.answers import Answer, Described, Filling, Redirected, Stored, Target
from appliance.cache.negative import NegativeCache
from appliance.cache.ports import Upstream, UpstreamReply, UpstreamUnavailable
from appliance.cache.verdicts import shows
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import accept_key
from appliance.oci.routes import Kind


class ClientCalls:
    def __init__(self, upstream: Upstream, gate: AccessGate, negative: NegativeCache) -> None:
        self._upstream = upstream
        self._gate = gate
        self._negative = negative

    async def fetch(
        self, target: Target, method: str, kind: Kind, reference: str | Digest, query: str = ""
    ) -> UpstreamReply:
        """Upstream with the client's credentials. A 200 to a HEAD by digest that shows
        the digest confirms it for the client. A manifest 404 is remembered for a short
        while (per credential) and replayed; blob 404s are not, since pushes ask for
        blobs just before uploading them."""
        url = target.url(kind, reference) + query
        key = self.negative_key(target, method, url)
        remembered = self._negative.get(key)
        if remembered is not None:
            return remembered
        epoch = self._negative.epoch
        if (down := self._gate.down(target.host)) is not None:
            raise down  # unreachable moments ago, for the gate as for this
        try:
            reply = await self._upstream.fetch(method, url, target.headers)
        except UpstreamUnavailable as e:
            self._gate.note_down(target.host, e)
            raise
        if kind is Kind.MANIFEST:
            reply = await self._negative.remember(key, reply, epoch)
        if (
            reply.status == 200
            and method == "HEAD"
            and isinstance(reference, Digest)
            and shows(reply, reference, None)
        ):
            self._gate.grant(target.host, target.repository, reference, target.authorization)
        return reply

    def negative_key(self, target: Target, method: str, url: str) -> tuple[str, ...]:
        """Remembered 404s are per request, credential and Accept set, under the (host,
        repository) a write there forgets."""
        fingerprint = self._gate.fingerprint(target.authorization)
        return (target.host, target.repository, method, url, fingerprint,
                accept_key(target.accept))  # fmt: skip

    def fingerprint(self, authorization: str | None) -> str:
        """What the gate keys a credential by (`AccessGate.fingerprint`)."""
        return self._gate.fingerprint(authorization)

    def remembered(self, key: tuple[str, ...]) -> UpstreamReply | None:
        return self._negative.get(key)

    @property
    def epoch(self) -> int:
        """See `NegativeCache.epoch`: read before asking what may be remembered."""
        return self._negative.epoch

    def remember_refusal(
        self, key: tuple[str, ...], refused_headers: dict[str, str], epoch: int
    ) -> None:
        self._negative.remember_refusal(key, refused_headers, epoch)

    def forget_missing(self, places: Collection[tuple[str, str]]) -> int:
        """See `NegativeCache.forget`."""
        return self._negative.forget(places)

    async def gated(
        self,
        target: Target,
        answer: Stored | Filling | Described | Redirected,
        size: int | None,
        kind: Kind,
    ) -> Answer:
        """`answer` if the client may have it, else upstream's refusal."""
        refusal = await self._gate.check(
            target.host, target.repository, answer.digest,
            url=target.url(kind, answer.digest),
            authorization=target.authorization,
            manifest=kind is Kind.MANIFEST, size=size, realm_down=target.realm_down,
        )  # fmt: skip
        return answer if refusal is None else refusal
