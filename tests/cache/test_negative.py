"""Upstream 404s remembered briefly, per key, with what a replayed refusal is made of."""

from __future__ import annotations

from multidict import CIMultiDict

from appliance.cache.negative import NegativeCache
from tests.cache.fakes import FakeReply

KEY = ("GET", "https://ghcr.io/v2/org/x/manifests/sha256-abc.sig", "fingerprint", "")


def not_found() -> FakeReply:
    headers = CIMultiDict({"www-authenticate": 'Bearer realm="x"', "X-Trace": "1"})
    return FakeReply(404, headers, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')


async def test_a_404_is_replayed_with_its_body_until_it_expires() -> None:
    now = [0.0]
    negative = NegativeCache(30, clock=lambda: now[0])
    upstream = not_found()
    remembered = await negative.remember(KEY, upstream)  # type: ignore[arg-type]
    assert upstream.closed  # its body was read and the connection let go
    replay = negative.get(KEY)
    assert replay is not None and replay is remembered
    assert (replay.status, replay.body) == (404, upstream.body)
    assert dict(replay.headers) == {"WWW-Authenticate": 'Bearer realm="x"'}  # nothing else
    assert negative.get((*KEY[:2], "another credential", "")) is None
    now[0] += 29
    assert negative.get(KEY) is not None
    now[0] += 2
    assert negative.get(KEY) is None


async def test_only_404s_are_kept_and_a_ttl_of_0_keeps_none() -> None:
    negative = NegativeCache(30)
    for status in (200, 401, 429, 500):
        reply = FakeReply(status, CIMultiDict(), b"x")
        assert await negative.remember(KEY, reply) is reply and not reply.closed  # type: ignore[arg-type]
    assert negative.get(KEY) is None
    off = NegativeCache(0)
    reply = not_found()
    assert await off.remember(KEY, reply) is reply  # type: ignore[arg-type]
    off.remember_refusal(KEY, {"Retry-After": "5"})
    assert off.get(KEY) is None


def test_the_gates_refusal_is_kept_like_upstreams_own_404() -> None:
    negative = NegativeCache(30)
    negative.remember_refusal(KEY, CIMultiDict({"retry-after": "5", "Server": "x"}))
    replay = negative.get(KEY)
    assert replay is not None and (replay.status, replay.body) == (404, b"")
    assert dict(replay.headers) == {"Retry-After": "5"}
