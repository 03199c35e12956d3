"""Who may read and write the local registry: htpasswd users (bcrypt), rules per
repository glob, and regcache's own token realm.

With `scheme: token`, a client challenged with `Bearer realm="https://HOST/token"` logs
in there once (Basic, checked against htpasswd) and gets a token for the scope it asked,
cut down to what the rules grant; tokens are HMAC-signed with a key made at start (a
restart only makes clients fetch new ones), and die with their user's htpasswd line.
With `scheme: basic`, every request carries the password (checked as `users.py` says).
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from appliance.config.local import ANYONE, USERS, LocalConfig
from appliance.local.ports import LocalError
from appliance.local.users import Htpasswd

PULL, PUSH, DELETE = "pull", "push", "delete"


@dataclass(frozen=True, slots=True)
class Who:
    """The client of one request: a user who logged in, or nobody (`name` None)."""

    name: str | None
    token: dict[str, tuple[str, ...]] | None = None
    """With a bearer token: what it grants, per repository."""


NOBODY = Who(None)


class LocalAccess:
    """Rules, users and tokens together: who a request's `Authorization` is, and what
    they may do in a repository."""

    def __init__(
        self,
        config: LocalConfig,
        htpasswd: Htpasswd | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._users = htpasswd or Htpasswd(config.auth.htpasswd)
        self._clock = clock
        self._key = secrets.token_bytes(32)

    @property
    def token_realm(self) -> bool:
        return self._config.auth.scheme == "token" and self._users.configured

    async def identify(self, authorization: str | None, host: str, *, tokens: bool = True) -> Who:
        """`who`, with a password checked off the loop (`Htpasswd.verify`). Without
        `tokens` (the realm itself), a bearer token names nobody: a token never buys
        another, or one would live forever and outlive its user."""
        scheme, _, value = (authorization or "").partition(" ")
        if scheme.lower() == "basic" and self._users.configured:
            return await self.login(*_basic(value.strip()), host)
        if scheme.lower() == "bearer" and not tokens:
            return NOBODY
        return self.who(authorization, host)

    async def login(self, user: str, password: str, host: str) -> Who:
        if await self._users.verify(user, password):
            return Who(user)
        raise LocalError(401, "UNAUTHORIZED", "authentication failed", self.challenge(host, None))

    def who(self, authorization: str | None, host: str) -> Who:
        """The client, from its `Authorization`; LocalError 401 for credentials that do
        not check out (never taken for anonymous)."""
        if not authorization or not self._users.configured:
            return NOBODY  # with no users, credentials name nobody
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "basic" and self._users.configured:
            user, password = _basic(value.strip())
            if self._users.check(user, password):
                return Who(user)
        elif scheme.lower() == "bearer" and self.token_realm:
            granted = self._verify(value.strip(), host)
            if granted is not None:
                return granted
        raise LocalError(401, "UNAUTHORIZED", "authentication failed", self.challenge(host, None))

    def allowed(self, who: Who, repository: str, action: str) -> bool:
        """What the rules grant `who` (a token grants no more than it says)."""
        if who.token is not None and action not in who.token.get(repository, ()):
            return False
        return action in self._granted(who.name, repository)

    def short_of(self, who: Who, repository: str, action: str) -> bool:
        """`who` holds a token without `action` on `repository`, which the rules would
        grant: a new token with that scope would do."""
        return (
            who.token is not None
            and action not in who.token.get(repository, ())
            and action in self._granted(who.name, repository)
        )

    def _granted(self, user: str | None, repository: str) -> tuple[str, ...]:
        for rule in self._config.access:
            if any(fnmatch.fnmatchcase(repository, glob) for glob in rule.repositories):
                actions = []
                if self._names(user, rule.read):
                    actions.append(PULL)
                if self._names(user, rule.write):
                    actions += [PUSH, DELETE]
                return tuple(actions)
        return ()

    def _names(self, user: str | None, names: tuple[str, ...]) -> bool:
        if ANYONE in names:
            return True
        if USERS in names and (user is not None or not self._users.configured):
            return True
        return user is not None and user in names

    def require(
        self, who: Who, host: str, repository: str, action: str, also: str | None = None
    ) -> None:
        """LocalError unless `who` may: 401 with a challenge naming the scope (and `also`)
        for a client that may get further by logging in (again), 403 DENIED for a user
        the rules refuse, and for anyone when there is nobody to log in as."""
        if self.allowed(who, repository, action):
            return
        scope = f"repository:{repository}:{_scope_actions(action)}"
        scope += f" {also}" if also else ""  # a mount's source, so one token does
        rules_allow = action in self._granted(who.name, repository)  # a token short of it
        if (who.name is None or rules_allow) and self._users.configured:
            raise LocalError(401, "UNAUTHORIZED", f"authentication required to {action}"
                             f" {repository}", self.challenge(host, scope))  # fmt: skip
        raise LocalError(403, "DENIED", f"{who.name or 'anonymous'} may not {action} {repository}"
                         " (local.access)")  # fmt: skip

    def challenge(self, host: str, scope: str | None) -> dict[str, str]:
        if not self._users.configured:
            return {}
        if self.token_realm:  # the realm as the client reached us (a port, if any)
            value = f'Bearer realm="https://{host}/token",service="{host_name(host)}"'
            value += f',scope="{scope}"' if scope else ""
        else:
            value = 'Basic realm="regcache local registry"'
        return {"WWW-Authenticate": value}

    def issue(self, who: Who, host: str, scopes: list[str]) -> dict[str, object]:
        """A token for `who` granting what it asked in `scopes` and the rules allow."""
        access: dict[str, list[str]] = {}
        for scope in (one for given in scopes for one in given.split()):
            kind, _, rest = scope.partition(":")
            repository, _, actions = rest.rpartition(":")
            if kind != "repository" or not repository:
                continue
            asked = {a.strip() for a in actions.split(",")}
            if "*" in asked:
                asked = {PULL, PUSH, DELETE}
            granted = [a for a in (PULL, PUSH, DELETE) if a in asked
                       and a in self._granted(who.name, repository)]  # fmt: skip
            access.setdefault(repository, [])
            access[repository] += [a for a in granted if a not in access[repository]]
        now = int(self._clock())
        ttl = int(self._config.auth.token_ttl.seconds)
        claims = {"sub": who.name, "aud": host_name(host), "exp": now + ttl, "access": access}
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        token = f"{payload}.{_b64(self._sign(payload))}"
        issued = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        return {"token": token, "access_token": token, "expires_in": ttl, "issued_at": issued}

    def _sign(self, payload: str) -> bytes:
        return hmac.new(self._key, payload.encode(), hashlib.sha256).digest()

    def _verify(self, token: str, host: str) -> Who | None:
        payload, _, signature = token.partition(".")
        try:
            good = hmac.compare_digest(_unb64(signature), self._sign(payload))
            claims = json.loads(_unb64(payload)) if good else None
        except (ValueError, binascii.Error):
            return None
        if not isinstance(claims, dict) or claims.get("aud") != host_name(host):
            return None
        if not isinstance(claims.get("exp"), int) or claims["exp"] < self._clock():
            return None
        name = claims.get("sub")
        if name is not None and (not isinstance(name, str) or not self._users.known(name)):
            return None  # a user removed from htpasswd: their tokens go with them
        granted = {str(r): tuple(str(a) for a in acts)
                   for r, acts in dict(claims.get("access") or {}).items()}  # fmt: skip
        return Who(name if isinstance(name, str) else None, granted)

    def repositories(self, who: Who, names: list[str]) -> list[str]:
        """Those of `names` that `who` may pull (the catalog lists no more)."""
        return [n for n in names if PULL in self._granted(who.name, n)]


def host_name(host: str) -> str:
    """A Host header's name without its port (local names are DNS names, never IPv6)."""
    return host.partition(":")[0]


def _scope_actions(action: str) -> str:
    return "pull,push" if action == PUSH else action


def _basic(value: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return "", ""
    user, _, password = decoded.partition(":")
    return user, password


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
