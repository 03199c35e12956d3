"""Signed CDN URLs met through real redirects never reach a log line, an audit line or a
client's error message: the whole path (proxy, cache, access gate, upstream client) over
a loopback registry that redirects blob reads to a loopback CDN."""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import ClientPayloadError, web
from aiohttp.test_utils import TestClient

from appliance.proxy.site import Site
from appliance.upstream.client import UpstreamClient
from tests.harness import free_port
from tests.upstream.loopback import LAB, loopback, serving
from tests.upstream.proxied import PlainHttp, proxied

BLOB = bytes(range(256)) * 400
DIGEST = "sha256:" + hashlib.sha256(BLOB).hexdigest()
PATH = f"/v2/lib/app/blobs/{DIGEST}"
MARK = "QQ"  # in every signed value below
# Docker Hub's Cloudflare URLs, and the other clouds' signed-URL parameters.
SIGNED = {
    "verify": "1712345678-Zx9QQdockerhubQQ",
    "X-Amz-Signature": "a1b2QQamzQQ",
    "X-Amz-Credential": "AKIAQQcredQQ",
    "X-Amz-Security-Token": "FwoQQsessionQQ",
    "sig": "QQazureQQ",
    "Key-Pair-Id": "K2QQkeypairQQ",
    "Signature": "QQcloudfrontQQ",
    "token": "QQtokenQQ",
}


@dataclass
class Lab:
    """The registry and CDN (one loopback server told apart by Host), what it does."""

    port: int = 0
    cdn: str = "ok"
    """ok | cut (the body ends early) | refused (the CDN's port is closed)."""
    closed_port: int = field(default_factory=free_port)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.host.startswith("reg.test"):
            port = self.closed_port if self.cdn == "refused" else self.port
            query = "&".join(f"{k}={v}" for k, v in SIGNED.items())
            raise web.HTTPTemporaryRedirect(f"http://cdn.test:{port}/blob/app?{query}")
        response = web.StreamResponse(headers={"Content-Length": str(len(BLOB))})
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        if self.cdn == "cut":
            await response.write(BLOB[: len(BLOB) // 3])
            assert request.transport is not None
            request.transport.close()
            return response
        await response.write(BLOB)
        return response


@dataclass
class Stack:
    lab: Lab
    client: TestClient[web.Request, web.Application]
    audit: list[dict[str, object]]


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    lab = Lab()
    audit: list[dict[str, object]] = []
    async with serving(lab.handle) as server:
        assert server.port is not None
        lab.port = server.port
        upstream = PlainHttp(UpstreamClient(loopback, None, 5, 5, targets=LAB), server.port)
        site = Site(tag_ttl_s=60, max_stale_s=3600, api=True, label="reg.test")
        async with proxied(tmp_path, upstream, site, audit.append) as client:
            yield Stack(lab, client, audit)


async def pull(stack: Stack, method: str = "GET", **headers: str) -> tuple[int, bytes]:
    response = await stack.client.request(method, PATH, headers={"Host": "reg.test", **headers})
    try:
        return response.status, await response.read()
    except ClientPayloadError:  # a body cut short is an answer too
        return response.status, b""


def assert_no_signature(caplog: pytest.LogCaptureFixture, stack: Stack, *bodies: bytes) -> None:
    # aiohttp.access: the loopback CDN's own request log (regcache's listener has none).
    records = [r for r in caplog.records if r.name != "aiohttp.access"]
    handler = logging.StreamHandler(text := io.StringIO())
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    for record in records:
        handler.handle(record)  # formatted with any traceback
    logged = text.getvalue()
    seen = [logged, json.dumps(stack.audit), *(b.decode(errors="replace") for b in bodies)]
    for where in seen:
        assert MARK not in where, where


@pytest.mark.parametrize("cdn", ["ok", "cut", "refused"])
async def test_a_redirect_to_a_signed_cdn_url_logs_no_signature(
    stack: Stack, caplog: pytest.LogCaptureFixture, cdn: str
) -> None:
    stack.lab.cdn = cdn
    with caplog.at_level(logging.DEBUG):
        status, body = await pull(stack)
    if cdn == "ok":
        assert (status, body) == (200, BLOB)
    else:  # the failure was logged, naming the CDN's URL
        assert body != BLOB
        assert any("http://cdn.test" in r.getMessage() for r in caplog.records)
    assert_no_signature(caplog, stack, body)


async def test_an_access_check_through_a_failing_cdn_logs_no_signature(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    assert await pull(stack, Authorization="Bearer alice-token-1") == (200, BLOB)
    stack.lab.cdn = "refused"  # another credential's check: a HEAD, redirected, fails
    with caplog.at_level(logging.DEBUG):
        status, body = await pull(stack, "HEAD", Authorization="Bearer bob-token-2")
    assert status >= 500
    assert any("check-failed" in r.getMessage() for r in caplog.records)
    assert_no_signature(caplog, stack, body)
