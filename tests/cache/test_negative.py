"""Upstream 404s remembered briefly, per key, with what a replayed refusal is made of."""

from __future__ import annotations

from multidict import CIMultiDict

from appliance.cache.negative import NegativeCache
from tests.cache.fakes import FakeReply

KEY = ("ghcr.io", "org/x", "GET", "https://ghcr.io/v2/org/x/manifests/sha256-abc.sig",
       "fingerprint", "")  # fmt: skip


def not_found() -> FakeReply:
    headers = CIMultiDict({"www-authenticate": 'Bearer realm="x"', "X-Trace": "1"})
    return FakeReply(404, headers, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')


async def test_a_404_is_replayed_with_its_body_until_it_expires() -> None:
    now = [0.0]
    negative = NegativeCache(30, clock=lambda: now[0])
    upstream = not_found()
    remembered = await negative.remember(KEY, upstream, negative.epoch)  # type: ignore[arg-type]
    assert upstream.closed  # its body was read and the connection let go
    replay = negative.get(KEY)
    assert replay is not None and replay is remembered
    assert (replay.status, replay.body) == (404, upstream.body)
    assert dict(replay.headers) == {"WWW-Authenticate": 'Bearer realm="x"'}  # nothing else
    assert negative.get((*KEY[:4], "another credential", "")) is None
    now[0] += 29
    assert negative.get(KEY) is not None
    now[0] += 2
    assert negative.get(KEY) is None


async def test_only_404s_are_kept_and_a_ttl_of_0_keeps_none() -> None:
    negative = NegativeCache(30)
    for status in (200, 401, 429, 500):
        reply = FakeReply(status, CIMultiDict(), b"x")
        assert await negative.remember(KEY, reply, 0) is reply and not reply.closed  # type: ignore[arg-type]
    assert negative.get(KEY) is None
    off = NegativeCache(0)
    reply = not_found()
    assert await off.remember(KEY, reply, 0) is reply  # type: ignore[arg-type]
    off.remember_refusal(KEY, {"Retry-After": "5"}, 0)
    assert off.get(KEY) is None


def test_the_gates_refusal_is_kept_like_upstreams_own_404() -> None:
    negative = NegativeCache(30)
    negative.remember_refusal(KEY, CIMultiDict({"retry-after": "5", "Server": "x"}), 0)
    replay = negative.get(KEY)
    assert replay is not None and (replay.status, replay.body) == (404, b"")
    assert dict(replay.headers) == {"Retry-After": "5"}


async def test_a_write_forgets_its_repositorys_404s_and_only_those() -> None:
    negative = NegativeCache(30)
    digest_key = (*KEY[:3], "https://ghcr.io/v2/org/x/manifests/sha256:" + "a" * 64, *KEY[4:])
    nested = ("ghcr.io", "org/x/y", *KEY[2:])  # another repository, its name a prefix
    elsewhere = ("eu.ghcr.io", "org/x", *KEY[2:])
    for key in (KEY, digest_key, nested, elsewhere):
        await negative.remember(key, not_found(), negative.epoch)  # type: ignore[arg-type]
    negative.remember_refusal((*KEY[:5], "other accept"), {}, negative.epoch)
    assert negative.forget({("ghcr.io", "org/x"), ("ghcr.io", "library/x")}) == 3
    assert negative.get(KEY) is None and negative.get(digest_key) is None
    assert negative.get(nested) is not None and negative.get(elsewhere) is not None


async def test_a_404_asked_for_before_a_write_is_not_kept() -> None:
    """A pull in flight while a push lands: its 404 may predate the push."""
    negative = NegativeCache(30)
    asked_at = negative.epoch
    negative.forget({("ghcr.io", "org/x")})
    reply = not_found()
    assert await negative.remember(KEY, reply, asked_at) is reply  # type: ignore[arg-type]
    negative.remember_refusal(KEY, {}, asked_at)
    assert negative.get(KEY) is None
    await negative.remember(KEY, not_found(), negative.epoch)  # type: ignore[arg-type]
    assert negative.get(KEY) is not None
