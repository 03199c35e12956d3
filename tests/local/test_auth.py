"""Who may use the local registry: htpasswd users (bcrypt, re-read when the file changes),
rules where the first matching glob decides, regcache's own signed tokens (scopes cut to
what the rules allow, bound to a host and a lifetime) and the answers a refusal gets."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from appliance.config.local import LocalAuth, LocalConfig, LocalRule
from appliance.config.values import Duration
from appliance.local.auth import DELETE, NOBODY, PULL, PUSH, LocalAccess, Who
from appliance.local.ports import LocalError
from tests.local.conftest import Clock

HOST = "registry.build.internal"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def access(
    users: Path | None, *rules: LocalRule, scheme: str = "token", clock: Clock | None = None
) -> LocalAccess:
    config = LocalConfig(
        auth=LocalAuth(htpasswd=users, scheme=scheme, token_ttl=Duration(300.0)),
        access=rules or (LocalRule(),),
    )
    return LocalAccess(config, clock=clock or Clock())


def refusal(call: object, *args: object) -> LocalError:
    with pytest.raises(LocalError) as caught:
        call(*args)  # type: ignore[operator]
    return caught.value


# Rules.

RULES = (
    LocalRule(("team/release-*",), read=("anonymous",), write=("alice",)),
    LocalRule(("team/*", "shared"), read=("*",), write=("bob",)),
)


@pytest.mark.parametrize(
    ("who", "repository", "actions"),
    [
        (NOBODY, "team/release-1", {PULL}),  # anonymous: everyone
        (Who("bob"), "team/release-1", {PULL}),  # the first rule decides, not the broader one
        (Who("alice"), "team/release-1", {PULL, PUSH, DELETE}),
        (Who("alice"), "team/app", {PULL}),  # `*`: any user who logged in
        (Who("bob"), "team/a/b", {PULL, PUSH, DELETE}),  # `*` in a glob crosses `/`
        (Who("bob"), "shared", {PULL, PUSH, DELETE}),
        (NOBODY, "team/app", set()),  # `*` is no anonymous client when there are users
        (Who("alice"), "elsewhere", set()),  # no rule matches: nobody
    ],
)
def test_the_first_rule_whose_glob_matches_decides(
    users: Path, who: Who, repository: str, actions: set[str]
) -> None:
    rules = access(users, *RULES)
    assert {a for a in (PULL, PUSH, DELETE) if rules.allowed(who, repository, a)} == actions


def test_without_htpasswd_a_star_is_everyone_and_a_user_name_is_nobody() -> None:
    rules = access(None, LocalRule(("open",)), LocalRule(("named",), ("alice",), ("alice",)))
    assert rules.allowed(NOBODY, "open", PULL) and rules.allowed(NOBODY, "open", DELETE)
    assert not rules.allowed(NOBODY, "named", PULL)
    assert not rules.token_realm  # nobody logs in: no realm to send clients to
    assert rules.challenge(HOST, None) == {}


def test_the_catalog_lists_only_repositories_the_client_may_pull(users: Path) -> None:
    rules = access(users, *RULES)
    names = ["elsewhere", "shared", "team/app", "team/release-1"]
    assert rules.repositories(NOBODY, names) == ["team/release-1"]
    assert rules.repositories(Who("bob"), names) == ["shared", "team/app", "team/release-1"]


# Who a request is.


def test_basic_credentials_name_the_user_and_bad_ones_are_refused_not_anonymous(
    users: Path,
) -> None:
    rules = access(users)
    assert rules.who(None, HOST) == NOBODY and rules.who("", HOST) == NOBODY
    assert rules.who(basic("alice", "wonder"), HOST) == Who("alice")
    for bad in (basic("alice", "nope"), basic("carol", "x"), "Basic !!notbase64",
                "Bearer not-a-token", "Digest x"):  # fmt: skip
        e = refusal(rules.who, bad, HOST)
        assert (e.status, e.code) == (401, "UNAUTHORIZED"), bad
        assert e.headers["WWW-Authenticate"].startswith(f'Bearer realm="https://{HOST}/token"')


def test_credentials_without_htpasswd_name_nobody_and_bearer_with_scheme_basic_is_refused(
    users: Path,
) -> None:
    assert access(None).who(basic("alice", "wonder"), HOST) == NOBODY  # nobody to be
    token_issuer = access(users)
    token = str(token_issuer.issue(Who("alice"), HOST, ["repository:x:pull"])["token"])
    basic_only = access(users, scheme="basic")
    e = refusal(basic_only.who, f"Bearer {token}", HOST)
    assert e.status == 401 and e.headers["WWW-Authenticate"].startswith("Basic realm=")
    assert basic_only.who(basic("bob", "builder"), HOST) == Who("bob")


# Tokens.


def claims_of(token: str) -> dict[str, object]:
    payload = token.split(".")[0]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def test_a_token_grants_what_was_asked_cut_to_what_the_rules_allow(users: Path) -> None:
    clock = Clock(5000.0)
    rules = access(users, *RULES, clock=clock)
    scopes = [
        "repository:team/release-1:pull,push,delete",
        "repository:team/app:pull,push",
        "repository:elsewhere:pull",
        "registry:catalog:*",
        "repository:team/app:pull",
    ]
    issued = rules.issue(Who("alice"), HOST, scopes)
    assert issued["expires_in"] == 300 and issued["access_token"] == issued["token"]
    assert issued["issued_at"] == "1970-01-01T01:23:20Z"
    token = str(issued["token"])
    claims = claims_of(token)
    assert claims["access"] == {
        "team/release-1": [PULL, PUSH, DELETE],
        "team/app": [PULL],
        "elsewhere": [],
    }
    assert (claims["sub"], claims["aud"], claims["exp"]) == ("alice", HOST, 5300)
    who = rules.who(f"Bearer {token}", HOST)
    assert who.name == "alice"
    assert rules.allowed(who, "team/release-1", DELETE)
    assert rules.allowed(who, "team/app", PULL) and not rules.allowed(who, "team/app", PUSH)
    assert not rules.allowed(who, "shared", PULL)  # the rules would, the token does not


def test_a_star_action_asks_for_everything_the_rules_allow(users: Path) -> None:
    rules = access(users, *RULES)
    for user, granted in (("alice", [PULL, PUSH, DELETE]), ("bob", [PULL])):
        token = rules.issue(Who(user), HOST, ["repository:team/release-9:*"])["token"]
        assert claims_of(str(token))["access"] == {"team/release-9": granted}


def test_an_anonymous_token_grants_what_anonymous_may(users: Path) -> None:
    rules = access(users, *RULES)
    token = str(rules.issue(NOBODY, HOST, ["repository:team/release-1:pull,push",
                                            "repository:team/app:pull"])["token"])  # fmt: skip
    assert claims_of(token)["access"] == {"team/release-1": [PULL], "team/app": []}
    who = rules.who(f"Bearer {token}", HOST)
    assert who.name is None and rules.allowed(who, "team/release-1", PULL)


def test_a_token_is_refused_once_expired(users: Path) -> None:
    clock = Clock(1000.0)
    rules = access(users, clock=clock)
    token = rules.issue(Who("alice"), HOST, ["repository:app:pull"])["token"]
    clock.now = 1300.0
    assert rules.who(f"Bearer {token}", HOST).name == "alice"
    clock.now = 1300.5
    assert refusal(rules.who, f"Bearer {token}", HOST).status == 401


def test_a_token_for_another_host_is_refused(users: Path) -> None:
    rules = access(users)
    token = rules.issue(Who("alice"), "other.internal", ["repository:app:pull"])["token"]
    assert rules.who(f"Bearer {token}", "other.internal").name == "alice"
    assert refusal(rules.who, f"Bearer {token}", HOST).status == 401


def test_a_tampered_token_is_refused(users: Path) -> None:
    rules = access(users, *RULES)
    token = str(rules.issue(Who("bob"), HOST, ["repository:team/release-1:pull"])["token"])
    payload, signature = token.split(".")
    claims = claims_of(token)
    claims["access"] = {"team/release-1": [PULL, PUSH, DELETE]}
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    for bad in (f"{forged}.{signature}", f"{payload}.{signature[:-4]}AAAA", payload,
                f"{payload}.!!", f"{payload}.{signature}x"):  # fmt: skip
        assert refusal(rules.who, f"Bearer {bad}", HOST).status == 401, bad
    assert rules.who(f"Bearer {token}", HOST).name == "bob"


def test_a_token_from_another_instance_is_refused(users: Path) -> None:
    before_restart, after_restart = access(users), access(users)
    token = before_restart.issue(Who("alice"), HOST, ["repository:app:pull"])["token"]
    assert before_restart.who(f"Bearer {token}", HOST).name == "alice"
    assert refusal(after_restart.who, f"Bearer {token}", HOST).status == 401


# Refusals.


def test_an_anonymous_client_is_challenged_with_the_scope_it_needs(users: Path) -> None:
    rules = access(users, *RULES)
    rules.require(NOBODY, HOST, "team/release-1", PULL)
    e = refusal(rules.require, NOBODY, HOST, "team/release-1", PUSH)
    assert (e.status, e.code) == (401, "UNAUTHORIZED")
    assert e.headers == {
        "WWW-Authenticate": f'Bearer realm="https://{HOST}/token",service="{HOST}"'
        ',scope="repository:team/release-1:pull,push"'
    }
    e = refusal(rules.require, NOBODY, HOST, "team/app", DELETE)
    assert e.headers["WWW-Authenticate"].endswith(',scope="repository:team/app:delete"')


def test_a_user_the_rules_refuse_is_denied_not_challenged(users: Path) -> None:
    rules = access(users, *RULES)
    e = refusal(rules.require, Who("bob"), HOST, "team/release-1", PUSH)
    assert (e.status, e.code, e.headers) == (403, "DENIED", {})
    assert "bob may not push team/release-1" in str(e)


def test_a_token_short_of_a_scope_the_rules_grant_gets_a_challenge_to_fetch_another(
    users: Path,
) -> None:
    rules = access(users, *RULES)
    token = rules.issue(Who("alice"), HOST, ["repository:team/release-1:pull"])["token"]
    who = rules.who(f"Bearer {token}", HOST)
    rules.require(who, HOST, "team/release-1", PULL)
    e = refusal(rules.require, who, HOST, "team/release-1", PUSH)
    assert e.status == 401 and 'scope="repository:team/release-1:pull,push"' in e.headers[
        "WWW-Authenticate"]  # fmt: skip
    e = refusal(rules.require, who, HOST, "shared", PUSH)  # bob's to write, not alice's
    assert e.status == 403


def test_with_scheme_basic_the_challenge_is_basic(users: Path) -> None:
    rules = access(users, scheme="basic")
    assert not rules.token_realm
    e = refusal(rules.require, NOBODY, HOST, "app", PULL)
    assert e.status == 401
    assert e.headers == {"WWW-Authenticate": 'Basic realm="regcache local registry"'}


def test_without_htpasswd_a_refusal_is_denied_since_nobody_can_log_in() -> None:
    rules = access(None, LocalRule(("named",), ("alice",), ("alice",)))
    e = refusal(rules.require, NOBODY, HOST, "named", PULL)
    assert (e.status, e.code) == (403, "DENIED")


def test_a_token_dies_with_its_users_htpasswd_line_and_never_buys_another(
    users: Path, lines: dict[str, str]
) -> None:
    rules = access(users)
    token = rules.issue(Who("alice"), HOST, ["repository:app:pull"])["token"]
    assert rules.who(f"Bearer {token}", f"{HOST}:8443").name == "alice"  # any port, one name
    users.write_text(lines["bob"] + "\n")  # alice goes
    os.utime(users, (0, 0))  # a changed file for sure (mtime), read again at once:
    fresh = access(users)
    forged_on = fresh.issue(Who("alice"), HOST, ["repository:app:pull"])["token"]
    assert refusal(fresh.who, f"Bearer {forged_on}", HOST).status == 401


async def test_the_realm_takes_a_password_never_a_token(users: Path) -> None:
    rules = access(users)
    token = rules.issue(Who("alice"), HOST, ["repository:app:pull"])["token"]
    assert await rules.identify(f"Bearer {token}", HOST, tokens=False) == NOBODY
    assert (await rules.identify(f"Bearer {token}", HOST)).name == "alice"
    assert (await rules.identify(basic("alice", "wonder"), HOST, tokens=False)).name == "alice"


def test_the_challenge_names_the_realm_at_the_port_the_client_used(users: Path) -> None:
    header = access(users).challenge(f"{HOST}:8443", "repository:app:pull")["WWW-Authenticate"]
    assert header.startswith(f'Bearer realm="https://{HOST}:8443/token",service="{HOST}"')
