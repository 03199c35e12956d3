"""The upstream client: one aiohttp session for every registry, CDN and token realm.

- Names are resolved by regcache's own upstream resolver (static overrides, then real
  resolvers), never through the appliance's interception.
- TLS is verified against the system roots plus an optional bundle.
- Bodies stream with per-read timeouts and no total timeout (layers can be many GB), and
  are never decompressed (`auto_decompress=False`): digests cover the bytes as sent.
- Redirects of blob and manifest GETs are followed here (RFC 9110 15.4): `Authorization`
  is dropped when leaving the registry host, a relative `Location` is resolved against
  the current URL, and when the target is itself a registry that wants an anonymous
  bearer token (registry.k8s.io → *.pkg.dev) that token step is done here too.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from multidict import CIMultiDict
from yarl import URL

from appliance.cache.ports import (
    UpstreamUnavailable,
    UpstreamUnreachable,
    UpstreamUnsafe,
    UpstreamUntrusted,
)
from appliance.config.model import IPAddress
from appliance.kit.bounded import BoundedMap
from appliance.kit.redact import redact
from appliance.oci.challenge import bearer
from appliance.oci.headers import Announced
from appliance.oci.mediatypes import MANIFEST_TYPES
from appliance.upstream.credentials import CredentialError, CredentialSource
from appliance.upstream.outages import RETRY_S, Outages
from appliance.upstream.targets import STRICT, TargetPolicy
from appliance.upstream.tokens import Tokens

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
MAX_REDIRECTS = 5
REDIRECTS = frozenset({301, 302, 303, 307, 308})
# RFC 9110 7.6.1 hop-by-hop fields, never forwarded in either direction.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
     "trailer", "transfer-encoding", "upgrade", "proxy-connection", "host"}
)  # fmt: skip


class UpstreamError(UpstreamUnavailable):
    """Upstream could not be reached or answered with something unusable. Its message
    names the URL asked (after a redirect, a signed CDN URL): redacted here, once."""

    def __init__(self, message: str) -> None:
        super().__init__(redact(message))


class UpstreamUnreachableError(UpstreamError, UpstreamUnreachable):
    """No connection could be made."""

    def __init__(self, message: str, host: str, *, tried: bool = True) -> None:
        UpstreamUnreachable.__init__(self, redact(message), host, tried=tried)


class UpstreamTlsError(UpstreamError, UpstreamUntrusted):
    """Upstream's certificate did not verify: nothing from it may be cached."""


def end_to_end(headers: Mapping[str, str]) -> CIMultiDict[str]:
    """`headers` minus hop-by-hop fields, including those listed in `Connection`."""
    named = {token.strip().lower() for token in headers.get("Connection", "").split(",")}
    out: CIMultiDict[str] = CIMultiDict()
    for key, value in headers.items():
        lower = key.lower()
        if lower not in HOP_BY_HOP and lower not in named:
            out.add(key, value)
    return out


# What regcache's own credentials may be used for: reading (issue #13). Never a write, a
# mount, an upload, or the catalog.
_READ_PATH = re.compile(
    r"/v2/|/v2/(?!.*/blobs/uploads(?:/|$)).+/(?:manifests/[^/]+|blobs/[^/]+|tags/list"
    r"|referrers/[^/]+)"
)
READ_METHODS = frozenset({"GET", "HEAD"})


def is_read(method: str, url: str) -> bool:
    """A request regcache's own credentials may be attached to."""
    return method in READ_METHODS and _READ_PATH.fullmatch(URL(url, encoded=True).path) is not None


def pull_only(challenge: str) -> bool:
    """Whether every scope a Bearer challenge asks for is `pull` (a token for it reads)."""
    found = bearer(challenge)
    if found is None:
        return False
    for scope in found.params.get("scope", "").split():
        _, _, actions = scope.rpartition(":")
        if not set(actions.split(",")) <= {"pull"}:
            return False
    return True


def _repository_of(path: str) -> str:
    """`library/alpine` of `/v2/library/alpine/manifests/3`; "" for other paths."""
    parts = path.split("/")
    for i, part in enumerate(parts):
        if i > 2 and part in ("manifests", "blobs", "tags", "referrers"):
            return "/".join(parts[2:i])
    return ""


class OwnResolver(AbstractResolver):
    """aiohttp's resolver interface over regcache's upstream resolver; addresses the
    target policy refuses (a name resolving to loopback, say) are left out."""

    def __init__(
        self,
        resolve: Callable[[str], Awaitable[tuple[IPAddress, ...]]],
        targets: TargetPolicy = STRICT,
    ) -> None:
        self._resolve = resolve
        self._targets = targets

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            addresses = await self._resolve(host)
        except Exception as e:
            raise OSError(f"cannot resolve {host}: {e}") from e
        allowed = [a for a in addresses if self._targets.address_ok(host, a)]
        if addresses and not allowed:
            raise OSError(f"{host} resolves only to addresses regcache must not reach")
        results: list[ResolveResult] = []
        for address in allowed:
            fam = socket.AF_INET6 if address.version == 6 else socket.AF_INET
            if family not in (socket.AF_UNSPEC, fam):
                continue
            results.append(
                {"hostname": host, "host": str(address), "port": port, "family": fam,
                 "proto": 0, "flags": socket.AI_NUMERICHOST}
            )  # fmt: skip
        if not results:
            raise OSError(f"no address of family {family!r} for {host}")
        return results

    async def close(self) -> None:
        return None


@dataclass(slots=True)
class Reply(Announced):
    """An upstream response whose body has not been read yet."""

    status: int
    headers: CIMultiDict[str]
    url: str
    _response: aiohttp.ClientResponse

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._response.content.iter_chunked(CHUNK_BYTES):
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as e:
            raise UpstreamError(f"reading {self.url}: {type(e).__name__} {e}") from e

    async def read(self, limit: int) -> bytes:
        body = bytearray()
        async for chunk in self.chunks():
            body += chunk
            if len(body) > limit:
                raise UpstreamError(f"{self.url}: body larger than {limit} bytes")
        return bytes(body)

    def close(self) -> None:
        self._response.close()


class UpstreamClient:
    def __init__(
        self,
        resolve: Callable[[str], Awaitable[tuple[IPAddress, ...]]],
        ca_bundle: Path | None,
        connect_timeout_s: float,
        read_timeout_s: float,
        offline: Callable[[], bool] = lambda: False,
        credentials: Callable[[str], CredentialSource | None] | None = None,
        on_reply: Callable[[str, str, int, str, Mapping[str, str]], None] = lambda *_: None,
        targets: TargetPolicy = STRICT,
        outage_retry_s: float = RETRY_S,
    ) -> None:
        self._offline = offline
        self._outages = Outages(connect_timeout_s, outage_retry_s)
        self._targets = targets
        self._on_reply = on_reply
        """(method, url, status, whose credentials, headers received) of every upstream
        reply; whose: `regcache` (configured), `clients` (a client's own) or `anonymous`."""
        context = ssl.create_default_context()
        if ca_bundle is not None:
            context.load_verify_locations(cafile=str(ca_bundle))
        context.set_alpn_protocols(["http/1.1"])
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                # New connections ask `resolve` (it honours TTLs): aiohttp's cache never expires.
                resolver=OwnResolver(resolve, targets),
                ssl=context,
                limit=0,
                use_dns_cache=False,
            ),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s
            ),
            auto_decompress=False,
            read_bufsize=4 << 20,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )
        self._tokens = Tokens(self._get_json)
        self._credentials = credentials or (lambda _host: None)
        # The last Bearer challenge per (host, repository) a configured credential met:
        # later requests present its cached token up front instead of meeting it again.
        self._challenges: BoundedMap[tuple[str, str], str] = BoundedMap(4096)

    async def close(self) -> None:
        await self._session.close()

    async def send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: AsyncIterator[bytes] | None = None,
        *,
        anonymous: bool = False,
    ) -> Reply:
        """One request, no redirects followed. A read (`is_read`) without `Authorization`
        to a registry with configured credentials gets them (unless `anonymous`); writes
        never do: a client that writes uses its own credentials."""
        host = URL(url).host or ""
        lend = not anonymous and "Authorization" not in headers and is_read(method, url)
        source = self._credentials(host) if lend else None
        if source is None:
            whose = "anonymous" if anonymous or "Authorization" not in headers else "clients"
            return await self._send(method, url, headers, body, whose)
        try:
            return await self._send_as_regcache(source, method, url, headers, body)
        except CredentialError as e:
            raise UpstreamError(f"{host}: configured credentials unusable: {e}") from e

    async def _send_as_regcache(
        self,
        source: CredentialSource,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: AsyncIterator[bytes] | None,
    ) -> Reply:
        outgoing = CIMultiDict(headers)
        key = (URL(url).host or "", _repository_of(URL(url).path))
        upfront = await source.authorization()
        known = self._challenges.get(key)
        if upfront is None and known is not None:  # token flow, challenge known
            # Only pull challenges are ever kept (below).
            basic = (await source.secret()).basic()
            token = await self._tokens.for_challenge(known, basic)
            upfront = f"Bearer {token}" if token else None
        if upfront is not None:
            outgoing["Authorization"] = upfront
        reply = await self._send(method, url, outgoing, body, "regcache")
        if reply.status != 401 or source.method != "token" or body is not None:
            return reply
        challenge = reply.headers.get("WWW-Authenticate", "")
        if not pull_only(challenge):  # a token for more than reading: not with ours
            return reply
        self._check_realm(reply, challenge, url)
        token = await self._tokens.for_challenge(challenge, (await source.secret()).basic())
        if token is None:
            return reply
        reply.close()
        self._challenges.set(key, challenge)
        outgoing["Authorization"] = f"Bearer {token}"
        return await self._send(method, url, outgoing, None, "regcache")

    async def _send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: AsyncIterator[bytes] | None,
        whose: str,
    ) -> Reply:
        if self._offline():
            raise UpstreamError(f"{method} {url}: offline mode, upstream is never contacted")
        target = URL(url, encoded=True)
        host, authority = target.host or "", f"{target.host}:{target.port}"
        if (failure := self._outages.refusal(authority)) is not None:
            message = f"{method} {url}: not tried, unreachable moments ago: {failure}"
            raise UpstreamUnreachableError(message, host, tried=False)
        try:
            response = await self._session.request(
                method, target, headers=end_to_end(headers), data=body, allow_redirects=False
            )
        except aiohttp.ClientSSLError as e:  # reached: its TLS failed
            self._outages.connected(authority)
            cert = getattr(e, "certificate_error", None)
            why = f"certificate rejected: {cert}" if cert else f"TLS failed: {e}"
            raise UpstreamTlsError(f"{url}: {why}") from e
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as e:
            failure = f"{type(e).__name__} {e}"
            self._outages.failed(authority, failure)
            raise UpstreamUnreachableError(f"{method} {url}: {failure}", host) from e
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            self._outages.connected(authority)
            raise UpstreamError(f"{method} {url}: {type(e).__name__} {e}") from e
        self._outages.connected(authority)
        self._on_reply(method, url, response.status, whose, response.headers)
        return Reply(response.status, end_to_end(response.headers), url, response)

    async def fetch(self, method: str, url: str, headers: Mapping[str, str]) -> Reply:
        """GET/HEAD of a manifest or blob, following redirects server-side."""
        return await self._follow(method, url, CIMultiDict(headers), anonymous=False)

    async def fetch_anonymous(self, method: str, url: str, accept: str | None = None) -> Reply:
        """Without credentials, through the registry's anonymous token step if it has one,
        following redirects. `accept` defaults to every manifest type: distribution
        answers 404 to a HEAD for an OCI manifest that does not say it takes one."""
        headers = CIMultiDict({"Accept": accept or ", ".join(MANIFEST_TYPES)})
        return await self._follow(method, url, headers, anonymous=True)

    async def _follow(
        self, method: str, url: str, outgoing: CIMultiDict[str], *, anonymous: bool
    ) -> Reply:
        origin = URL(url).origin()
        current = url
        for _ in range(MAX_REDIRECTS + 1):
            # regcache's own credentials go to the registry asked, never a redirect target.
            elsewhere = URL(current).origin() != origin
            reply = await self.send(method, current, outgoing, anonymous=anonymous or elsewhere)
            if reply.status == 401 and (anonymous or elsewhere):
                reply = await self._with_anonymous_token(reply, method, current, outgoing)
            if reply.status not in REDIRECTS:
                return reply
            location = reply.headers.get("Location")
            reply.close()
            if not location:
                raise UpstreamError(f"{current}: {reply.status} without Location")
            target = URL(current).join(URL(location, encoded=True))
            self._targets.check(str(target), URL(url).host or "")
            if target.origin() != URL(current).origin():
                # Signed CDN URLs carry their own authority; never leak client credentials.
                outgoing.popall("Authorization", None)
            log.debug("upstream redirect from=%s to_host=%s", URL(current).host, target.host)
            current = str(target)
        raise UpstreamError(f"{url}: more than {MAX_REDIRECTS} redirects")

    async def _with_anonymous_token(
        self, reply: Reply, method: str, url: str, headers: CIMultiDict[str]
    ) -> Reply:
        """A redirect led to another registry that wants a token: get an anonymous one."""
        challenge = reply.headers.get("WWW-Authenticate", "")
        self._check_realm(reply, challenge, url)
        token = await self._tokens.for_challenge(challenge)
        if token is None:
            return reply
        reply.close()
        retry = CIMultiDict(headers)
        retry["Authorization"] = f"Bearer {token}"
        return await self.send(method, url, retry, anonymous=True)

    def _check_realm(self, reply: Reply, challenge: str, url: str) -> None:
        """A token realm is a URL upstream chose: the target policy applies to it (if
        it refuses, `reply`, the challenge's, is closed)."""
        found = bearer(challenge)
        if found is None:
            return
        try:
            self._targets.check(found.params["realm"], URL(url).host or "")
        except UpstreamUnsafe:
            reply.close()
            raise

    async def _get_json(self, url: str, authorization: str | None) -> tuple[int, bytes]:
        headers = {"Accept": "application/json"}
        if authorization:
            headers["Authorization"] = authorization
        reply = await self.send("GET", url, headers, anonymous=True)
        try:
            return reply.status, await reply.read(1 << 20)
        finally:
            reply.close()
