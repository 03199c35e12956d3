"""Bearer tokens regcache fetches itself, from a token endpoint faked as our own `GetJson`
port, on a fake clock."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from appliance.upstream.tokens import Tokens

HUB = ('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
       'scope="repository:library/alpine:pull"')  # fmt: skip


@dataclass
class Realm:
    """A token endpoint: answers every request with `status` and `body`."""

    status: int = 200
    body: bytes = b'{"token": "t1", "expires_in": 300}'
    asked: list[tuple[str, str | None]] = field(default_factory=list)

    async def __call__(self, url: str, basic: str | None) -> tuple[int, bytes]:
        self.asked.append((url, basic))
        return self.status, self.body


async def test_a_token_is_fetched_for_the_challenge_and_cached_until_near_its_expiry() -> None:
    realm, now = Realm(), [0.0]
    tokens = Tokens(realm, clock=lambda: now[0])
    assert await tokens.for_challenge(HUB) == "t1"
    assert realm.asked == [
        ("https://auth.docker.io/token?service=registry.docker.io"
         "&scope=repository%3Alibrary%2Falpine%3Apull", None),
    ]  # fmt: skip
    now[0] = 289.0  # expires_in less a 10 s margin
    assert await tokens.for_challenge(HUB) == "t1" and len(realm.asked) == 1
    realm.body = b'{"token": "t2", "expires_in": 300}'
    now[0] = 291.0
    assert await tokens.for_challenge(HUB) == "t2" and len(realm.asked) == 2


async def test_tokens_are_kept_apart_per_credential_and_scope() -> None:
    realm = Realm()
    tokens = Tokens(realm)
    push = HUB.replace(":pull", ":pull,push")
    for header, basic in ((HUB, None), (HUB, "Basic dTpw"), (HUB, "Basic b3RoZXI6cA=="),
                          (push, None), (HUB, "Basic dTpw"), (HUB, None)):  # fmt: skip
        assert await tokens.for_challenge(header, basic) == "t1"
    assert [basic for _, basic in realm.asked] == [None, "Basic dTpw", "Basic b3RoZXI6cA==", None]


async def test_an_access_token_without_expiry_is_kept_for_the_default_minute() -> None:
    realm, now = Realm(body=json.dumps({"access_token": "a1"}).encode()), [0.0]
    tokens = Tokens(realm, clock=lambda: now[0])
    assert await tokens.for_challenge('Bearer realm="https://ghcr.io/token"') == "a1"
    assert realm.asked == [("https://ghcr.io/token", None)]
    now[0] = 49.0
    assert await tokens.for_challenge('Bearer realm="https://ghcr.io/token"') == "a1"
    now[0] = 51.0
    await tokens.for_challenge('Bearer realm="https://ghcr.io/token"')
    assert len(realm.asked) == 2


async def test_no_token_from_a_refusal_an_unusable_answer_or_a_challenge_that_is_not_bearer() -> (
    None
):
    for realm in (Realm(status=401), Realm(body=b"<html>"), Realm(body=b'{"expires_in": 5}')):
        tokens = Tokens(realm)
        assert await tokens.for_challenge(HUB) is None
        assert await tokens.for_challenge(HUB) is None
        assert len(realm.asked) == 2  # nothing cached
    realm = Realm()
    assert await Tokens(realm).for_challenge('Basic realm="registry"') is None
    assert await Tokens(realm).for_challenge('Bearer service="no realm"') is None
    assert realm.asked == []


@pytest.mark.parametrize("body", [b'["t"]', b'"t"', b"7"])
async def test_a_token_answer_that_is_not_a_json_object_gives_no_token(body: bytes) -> None:
    assert await Tokens(Realm(body=body)).for_challenge(HUB) is None
