"""The local registry over HTTP: the distribution API's routes mapped onto
`LocalRegistry`, each checked against `LocalAccess` first, plus the token realm
(`/token`). Nothing here reaches an upstream. Bodies stream to the cache's loop as they
come (`Bridge.export`); stored content is sent from this loop like any stored answer."""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web

from appliance.cache.answers import Stored
from appliance.local.auth import DELETE, PULL, PUSH, LocalAccess, Who, host_name
from appliance.local.ports import LocalError
from appliance.local.registry import MAX_MANIFEST_BYTES, LocalRegistry, Reply
from appliance.oci.digest import Digest, DigestError
from appliance.oci.names import InvalidName, check_repository, parse_reference
from appliance.proxy.errors import API_VERSION, registry_error
from appliance.proxy.loops import Bridge
from appliance.proxy.passthrough import STREAM_CHUNK_BYTES
from appliance.proxy.responses import render

T = TypeVar("T")
_DIGITS = re.compile(r"[0-9]{1,18}")  # not str.isdigit: "²" is a digit to it, not to int()

_ROUTES = (
    ("upload", re.compile(r"/v2/(?P<name>.+)/blobs/uploads/(?P<ref>[^/]*)", re.S)),
    ("blob", re.compile(r"/v2/(?P<name>.+)/blobs/(?P<ref>[^/]+)", re.S)),
    ("manifest", re.compile(r"/v2/(?P<name>.+)/manifests/(?P<ref>[^/]+)", re.S)),
    ("tags", re.compile(r"/v2/(?P<name>.+)/tags/list(?P<ref>)", re.S)),
    ("referrers", re.compile(r"/v2/(?P<name>.+)/referrers/(?P<ref>[^/]+)", re.S)),
)
_METHODS = {
    "upload": {"POST", "PATCH", "PUT", "GET", "DELETE"},
    "blob": {"GET", "HEAD", "DELETE"},
    "manifest": {"GET", "HEAD", "PUT", "DELETE"},
    "tags": {"GET"},
    "referrers": {"GET"},
}


@dataclass(frozen=True, slots=True)
class _Call:
    kind: str
    repository: str
    ref: str
    action: str


class LocalSite:
    """One serving loop's handlers for the local registry's hosts."""

    def __init__(
        self,
        registry: LocalRegistry,
        access: LocalAccess,
        bridge: Bridge,
        ready: Callable[[], bool] = lambda: True,
        audit: Callable[[dict[str, object]], None] | None = None,
    ) -> None:
        self._registry = registry
        self._access = access
        self._bridge = bridge
        self._ready = ready
        self._audit = audit
        """The pull audit log: a line per manifest or blob answered, as for the cache's."""
        """The store agrees with its index (start-up reconciliation is over)."""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """`request` to one of the local registry's names. Its Host as the client sent
        it (with a port, if any) names the token realm; tokens are for the name alone."""
        try:
            if request.method not in ("GET", "HEAD") and not self._ready():
                raise LocalError(503, "UNAVAILABLE", "the store is being checked at start;"
                                 " try again shortly", {"Retry-After": "5"})  # fmt: skip
            return await self._handle(request, request.host)
        except LocalError as e:
            response = registry_error(e.status, e.code, str(e))
            response.headers.update(e.headers)
            return response

    async def _handle(self, request: web.Request, host: str) -> web.StreamResponse:
        path = request.path
        if path == "/token" and request.method == "POST":
            return await self._oauth(request, host)
        token = path != "/token"  # the realm takes a password, never a token
        who = await self._access.identify(request.headers.get("Authorization"), host,
                                          tokens=token)  # fmt: skip
        if path == "/token" and request.method == "GET":
            scopes = request.query.getall("scope", [])
            return web.json_response(self._access.issue(who, host, scopes))
        if path in ("/v2", "/v2/") and request.method in ("GET", "HEAD"):
            if who.name is None and self._access.challenge(host, None):
                raise LocalError(401, "UNAUTHORIZED", "log in to this registry",
                                 self._access.challenge(host, None))  # fmt: skip
            return web.json_response({}, headers=API_VERSION)
        if path == "/v2/_catalog" and request.method == "GET":
            if who.name is None and self._access.challenge(host, None):
                raise LocalError(401, "UNAUTHORIZED", "log in to list repositories",
                                 self._access.challenge(host, "registry:catalog:*"))  # fmt: skip
            names = self._access.repositories(who, await self._run(self._registry.repositories()))
            n, last = _paging(request)
            return _send(await self._run(self._registry.catalog(names, n, last)))
        call = _route(request.method, path)
        source = request.query.get("from") if "mount" in request.query else None
        also = f"repository:{_repository(source)}:pull" if source else None
        self._access.require(who, host, call.repository, call.action, also)
        return await self._dispatch(request, call, who, host)

    async def _oauth(self, request: web.Request, host: str) -> web.StreamResponse:
        """The realm's OAuth2 password grant (containerd asks this way first)."""
        form = await request.post()
        if form.get("grant_type") != "password":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        user, password = str(form.get("username", "")), str(form.get("password", ""))
        who = await self._access.login(user, password, host)
        token = self._access.issue(who, host, [str(form.get("scope", ""))])
        return web.json_response({**token, "scope": str(form.get("scope", ""))})

    async def _dispatch(
        self, request: web.Request, call: _Call, who: Who, host: str
    ) -> web.StreamResponse:
        registry, repository, method = self._registry, call.repository, request.method
        match call.kind, method:
            case "blob", "GET" | "HEAD":
                found = registry.blob(repository, _digest(call.ref))
                return await self._stored(request, found, call, who)
            case "manifest", "GET" | "HEAD":
                reference = _reference(call.ref)
                found = registry.manifest(repository, reference)
                return await self._stored(request, found, call, who)
            case "manifest", "PUT":
                body = await _read_manifest(request)
                content_type = request.headers.get("Content-Type", "")
                put = registry.put_manifest(repository, _reference(call.ref), content_type, body)
                return _send(await self._run(put))
            case "manifest", "DELETE":
                return _send(
                    await self._run(registry.delete_manifest(repository, _reference(call.ref)))
                )
            case "blob", "DELETE":
                return _send(await self._run(registry.delete_blob(repository, _digest(call.ref))))
            case "tags", _:
                n, last = _paging(request)
                return _send(await self._run(registry.tags(repository, n, last)))
            case "referrers", _:
                kind = request.query.get("artifactType")
                listed = registry.referrers(repository, _digest(call.ref), kind)
                return _send(await self._run(listed))
        return await self._upload(request, call, who, host)

    async def _upload(
        self, request: web.Request, call: _Call, who: Who, host: str
    ) -> web.StreamResponse:
        registry, repository, name = self._registry, call.repository, call.ref
        query, method = request.query, request.method
        digest = _digest(query["digest"]) if "digest" in query else None
        if method == "POST" and not name:
            mount = None
            if "mount" in query and "from" in query:
                source = _repository(query["from"])
                if self._access.short_of(who, source, PULL):  # ask for both, as distribution
                    scopes = f"repository:{repository}:pull,push repository:{source}:pull"
                    raise LocalError(401, "UNAUTHORIZED", f"a mount needs pull on {source}",
                                     self._access.challenge(host, scopes))  # fmt: skip
                if self._access.allowed(who, source, PULL):
                    mount = (_digest(query["mount"]), source)
            started = registry.start_upload(repository, digest, _body(request, self._bridge),
                                            mount)  # fmt: skip
            return _send(await self._run(started))
        if not name:
            raise LocalError(404, "BLOB_UPLOAD_UNKNOWN", "name the upload")
        if method == "PATCH":
            offset = _offset(request.headers.get("Content-Range", ""))
            body = _body(request, self._bridge) or _empty()
            return _send(await self._run(registry.patch(repository, name, offset, body)))
        if method == "PUT":
            if digest is None:
                raise LocalError(400, "DIGEST_INVALID", "the closing PUT must name ?digest=")
            finish = registry.finish(repository, name, digest, _body(request, self._bridge))
            return _send(await self._run(finish))
        if method == "GET":
            return _send(await self._run(registry.upload_status(repository, name)))
        return _send(await self._run(registry.cancel(repository, name)))

    async def _stored(
        self, request: web.Request, found: Coroutine[Any, Any, Stored], call: _Call, who: Who
    ) -> web.StreamResponse:
        started, sent = time.monotonic(), [0]
        stored = await self._run(found)
        try:
            response = await render(request, stored, lambda n, _: sent.append(n), self._bridge,
                                    manifest=False)  # fmt: skip
        except FileNotFoundError:  # removed (`cache rm --force`) since the lookup
            raise LocalError(404, "BLOB_UNKNOWN", f"{stored.digest} is gone") from None
        if self._audit is not None:
            self._audit({
                "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                "client": request.remote, "registry": host_name(request.host),
                "repository": call.repository, "reference": call.ref,
                "digest": str(stored.digest), "kind": call.kind,
                "method": request.method, "status": response.status, "bytes": sum(sent),
                "outcome": "local", "user": who.name,
                "ms": round((time.monotonic() - started) * 1000, 1),
            })  # fmt: skip
        return response

    async def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return await self._bridge.run(coro)


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""


def _route(method: str, path: str) -> _Call:
    for kind, pattern in _ROUTES:
        found = pattern.fullmatch(path)
        if found is None:
            continue
        if method not in _METHODS[kind]:
            raise LocalError(405, "UNSUPPORTED", f"{method} is not supported on {kind} paths")
        repository, ref = _repository(found.group("name")), found.group("ref") or ""
        if kind in ("upload", "manifest") and method in ("POST", "PATCH", "PUT"):
            action = PUSH
        elif method == "DELETE":
            action = PUSH if kind == "upload" else DELETE
        else:
            action = PUSH if kind == "upload" else PULL
        return _Call(kind, repository, ref, action)
    raise LocalError(404, "NOT_FOUND", f"no such endpoint: {path[:200]}")


def _repository(name: str) -> str:
    try:
        return check_repository(name)
    except InvalidName as e:
        raise LocalError(400, "NAME_INVALID", str(e)) from e


def _digest(text: str) -> Digest:
    try:
        return Digest.parse(text)
    except DigestError as e:
        raise LocalError(400, "DIGEST_INVALID", str(e)) from e


def _reference(text: str) -> str | Digest:
    try:
        return parse_reference(text)
    except (InvalidName, DigestError) as e:
        code = "DIGEST_INVALID" if ":" in text else "TAG_INVALID"
        raise LocalError(400, code, str(e)) from e


def _offset(content_range: str) -> int | None:
    if not content_range:
        return None
    start, sep, end = content_range.strip().removeprefix("bytes ").partition("-")
    if (
        not sep
        or not _DIGITS.fullmatch(start)
        or not _DIGITS.fullmatch(end)
        or int(end) < int(start)
    ):
        raise LocalError(416, "BLOB_UPLOAD_INVALID", f"bad Content-Range {content_range!r}")
    return int(start)


def _paging(request: web.Request) -> tuple[int | None, str | None]:
    n = request.query.get("n")
    if n is not None and not _DIGITS.fullmatch(n):
        raise LocalError(400, "PAGINATION_NUMBER_INVALID", f"n={n!r} is not a number")
    return (None if n is None else int(n)), request.query.get("last")


def _body(request: web.Request, bridge: Bridge) -> AsyncIterator[bytes] | None:
    if not request.can_read_body:
        return None
    return bridge.export(request.content.iter_chunked(STREAM_CHUNK_BYTES))


async def _read_manifest(request: web.Request) -> bytes:
    body = bytearray()
    async for chunk in request.content.iter_chunked(STREAM_CHUNK_BYTES):
        body += chunk
        if len(body) > MAX_MANIFEST_BYTES:
            raise LocalError(413, "SIZE_INVALID", f"a manifest may be {MAX_MANIFEST_BYTES}"
                             " bytes at most")  # fmt: skip
    return bytes(body)


def _send(reply: Reply) -> web.Response:
    headers = {**API_VERSION, **reply.headers}
    if reply.content_type is None:
        return web.Response(status=reply.status, headers=headers)
    return web.Response(status=reply.status, body=reply.body, headers=headers,
                        content_type=reply.content_type)  # fmt: skip
