"""The conformance suite's registry client: one endpoint over aiohttp, its host name mapped
to where it really listens, `Location` resolved and 401 challenges answered as clients do."""

from __future__ import annotations

import base64
import json
import re
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from multidict import CIMultiDictProxy
from yarl import URL

# What a target may claim beyond the spec's MUSTs: tests of an unclaimed feature skip, or
# check the answer the spec requires when the feature is disabled.
FEATURES = frozenset({
    "referrers",  # GET /v2/<name>/referrers/<digest>, OCI-Subject on a manifest PUT
    "delete",  # DELETE /v2/<name>/manifests/<digest>
    "tag_delete",  # DELETE /v2/<name>/manifests/<tag>
    "blob_delete",  # DELETE /v2/<name>/blobs/<digest>
    "mount",  # POST /v2/<name>/blobs/uploads/?mount=<digest>&from=<other> answers 201
    "range",  # GET /v2/<name>/blobs/<digest> with a Range header answers 206
    "single_post",  # POST /v2/<name>/blobs/uploads/?digest=<digest> with the body: 201
    "reference_check",  # a manifest naming a blob the repository lacks is refused
    "catalog",  # GET /v2/_catalog (Docker Registry HTTP API V2, not in OCI 1.1)
})  # fmt: skip
_REPOSITORY = re.compile(r"^/v2/(.+?)/(?:blobs|manifests|tags|referrers)/")
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A registry as clients name it (`host`) and where it really listens (`connect`)."""

    host: str  # e.g. "registry.build.internal" or "127.0.0.1:5000"
    connect: str  # "address:port"
    scheme: str = "http"
    ca: Path | None = None
    auth: tuple[str, str] | None = None  # username, password
    features: frozenset[str] = frozenset()
    namespace: str = "conformance"  # repository prefix: runs and targets do not collide
    # Test function name -> why this target is known to break that requirement; conftest
    # turns each into a strict xfail, so a fixed deviation shows as a failure to clear it.
    deviations: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        unknown = self.features - FEATURES
        if unknown:
            raise ValueError(f"unknown features {sorted(unknown)}; known: {sorted(FEATURES)}")
        if self.scheme not in ("http", "https"):
            raise ValueError(f"scheme must be http or https, not {self.scheme!r}")

    @property
    def base(self) -> URL:
        return URL(f"{self.scheme}://{self.host}")

    def claims(self, feature: str) -> bool:
        if feature not in FEATURES:
            raise ValueError(f"unknown feature {feature!r}")
        return feature in self.features


class HostMap(AbstractResolver):
    """The endpoint's host name (any port) to its `connect` address; no other name resolves,
    so nothing the suite sends can leave for a real DNS answer."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._name = URL(f"//{endpoint.host}").raw_host or ""
        address, _, port = endpoint.connect.rpartition(":")
        self._address, self._port = address.strip("[]"), int(port)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host.lower() != self._name.lower():
            raise OSError(f"conformance client resolves only {self._name}, not {host}")
        family = socket.AF_INET6 if ":" in self._address else socket.AF_INET
        return [{"hostname": host, "host": self._address, "port": self._port,
                 "family": family, "proto": 0, "flags": socket.AI_NUMERICHOST}]  # fmt: skip

    async def close(self) -> None:
        return None


@dataclass(frozen=True, slots=True, repr=False)
class Reply:
    """One answer, its body read whole."""

    method: str
    url: URL
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes
    # Why the body could not be read as its headers framed it (a Content-Length the body
    # does not fill), or None: a registry's HTTP is judged too, not only its status codes.
    broken: str | None = None

    def location(self) -> URL:
        """`Location` resolved against the request's URL: absolute or relative alike."""
        value = self.headers.get("Location")
        assert value, f"{self.method} {self.url} answered {self.status} without a Location"
        return self.url.join(URL(value, encoded=True))

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        headers = {k: v[:120] for k, v in self.headers.items() if k.lower() != "date"}
        broken = f" BROKEN: {self.broken}" if self.broken else ""
        return f"{self.method} {self.url} -> {self.status} {headers} {self.body[:300]!r}{broken}"


def challenges(values: list[str]) -> dict[str, dict[str, str]]:
    """`WWW-Authenticate` values as {scheme: params}: `Bearer realm="…",scope="…"`."""
    found: dict[str, dict[str, str]] = {}
    for value in values:
        scheme, _, rest = value.strip().partition(" ")
        found[scheme.lower()] = dict(_CHALLENGE_PARAM.findall(rest))
    return found


class Registry:
    """An aiohttp session on one endpoint; `async with Registry(endpoint) as registry`."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._session: aiohttp.ClientSession | None = None
        # Authorization per repository ("" for /v2/ itself); "*" is Basic, good everywhere.
        self._authorization: dict[str, str] = {}
        self.token_requests = 0
        # Every answer's `Warning` values, for the spec's rules on them (conftest checks).
        self.warnings: list[list[str]] = []

    async def __aenter__(self) -> Registry:
        context: ssl.SSLContext | bool = False
        if self.endpoint.scheme == "https":
            context = ssl.create_default_context(
                cafile=str(self.endpoint.ca) if self.endpoint.ca else None
            )
        connector = aiohttp.TCPConnector(resolver=HostMap(self.endpoint), ssl=context)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=30)
        )
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()

    def url(self, target: str | URL) -> URL:
        """A path on the endpoint, or an absolute URL (a `Location`) as it is."""
        if isinstance(target, URL):
            return target if target.is_absolute() else self.endpoint.base.join(target)
        return self.endpoint.base.join(URL(target, encoded=True))

    async def request(
        self,
        method: str,
        target: str | URL,
        *,
        headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
        query: Mapping[str, str] | None = None,
    ) -> Reply:
        """One request; a 401 is answered once (Basic, or a Bearer token for the challenge's
        scope) and the request sent again, as docker and containerd do."""
        url = self.url(target)
        if query:
            url = url.update_query(query)
        key = self._key(url)
        reply = await self._send(method, url, headers, data, key)
        if reply.status == 401:
            answer = await self._answer(reply, key)
            if answer is not None:
                slot, authorization = answer
                self._authorization[slot] = authorization
                reply = await self._send(method, url, headers, data, key)
        return reply

    async def _send(
        self,
        method: str,
        url: URL,
        headers: Mapping[str, str] | None,
        data: bytes | None,
        key: str,
    ) -> Reply:
        assert self._session is not None, "use Registry as an async context manager"
        sent = dict(headers or {})
        authorization = self._authorization.get(key) or self._authorization.get("*")
        if authorization and "Authorization" not in sent:
            sent["Authorization"] = authorization
        async with self._session.request(method, url, headers=sent, data=data) as response:
            self.warnings.append(response.headers.getall("Warning", []))
            try:
                body, broken = await response.read(), None
            except aiohttp.ClientPayloadError as error:
                body, broken = b"", str(error)
            return Reply(method, response.url, response.status, response.headers, body, broken)

    async def _answer(self, reply: Reply, key: str) -> tuple[str, str] | None:
        """(where to keep it, the Authorization value) for a 401's challenge: a Bearer
        token is the repository's, Basic credentials are good everywhere ("*")."""
        found = challenges(reply.headers.getall("WWW-Authenticate", []))
        if "bearer" in found and "realm" in found["bearer"]:
            return key, await self._token(found["bearer"])
        if "basic" in found and self.endpoint.auth is not None:
            return "*", _basic(self.endpoint.auth)
        return None

    async def _token(self, challenge: dict[str, str]) -> str:
        """A token from the realm for the challenge's service and scopes (space-separated
        scopes become one `scope` parameter each), with our credentials if we have any."""
        assert self._session is not None
        self.token_requests += 1
        params = [("service", challenge["service"])] if "service" in challenge else []
        params += [("scope", scope) for scope in challenge.get("scope", "").split() if scope]
        realm = URL(challenge["realm"]).update_query(params)
        headers = {"Authorization": _basic(self.endpoint.auth)} if self.endpoint.auth else {}
        async with self._session.get(realm, headers=headers) as response:
            body = await response.read()
            assert response.status == 200, f"token realm {realm} answered {response.status}"
        answer = json.loads(body)
        return f"Bearer {answer.get('token') or answer['access_token']}"

    @staticmethod
    def _key(url: URL) -> str:
        match = _REPOSITORY.match(url.raw_path)
        return match.group(1) if match else ""


def _basic(auth: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
