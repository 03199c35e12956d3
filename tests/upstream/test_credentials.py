"""regcache's own credentials, against real HTTP servers on loopback."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from appliance.config.model import CredentialsConfig, SecretRef
from appliance.upstream.client import UpstreamClient
from appliance.upstream.credentials import CredentialError, CredentialSource
from tests.upstream.loopback import LAB, loopback, serving

ALICE = "Basic " + base64.b64encode(b"alice:s3cret-pass").decode()


@pytest.fixture
async def server() -> AsyncIterator[tuple[TestServer, list[tuple[str, str, str | None]]]]:
    seen: list[tuple[str, str, str | None]] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        host = (request.host or "").split(":")[0]
        auth = request.headers.get("Authorization")
        seen.append((host, request.path, auth))
        port = request.url.port
        if host == "basic.test":
            if auth != ALICE and auth != "Bearer client-own":
                return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="x"'})
            if request.path == "/v2/x/blobs/moved":
                raise web.HTTPTemporaryRedirect(f"http://cdn.test:{port}/data")
            return web.Response(text="basic ok")
        if host == "pushy.test":  # a registry whose challenge asks for more than pull
            if auth is None:
                return web.Response(status=401, headers={"WWW-Authenticate":
                    f'Bearer realm="http://token.test:{port}/token",service="t",'
                    'scope="repository:x:pull,push"'})  # fmt: skip
            return web.Response(text="pushy ok")
        if host == "token.test" and request.path == "/token":
            if auth != ALICE:
                return web.Response(status=401)
            return web.json_response({"token": "granted", "expires_in": 300})
        if host == "token.test":
            if auth != "Bearer granted":
                return web.Response(status=401, headers={"WWW-Authenticate":
                    f'Bearer realm="http://token.test:{port}/token",service="t",'
                    'scope="repository:x:pull"'})  # fmt: skip
            return web.Response(text="token ok")
        if host == "static.test":
            return web.Response(text="static ok" if auth == "Bearer from-env" else "no", status=200)
        return web.Response(text=f"{host} {auth}")

    async with serving(handle) as test_server:
        yield test_server, seen


def sources(tmp_path: Path) -> dict[str, CredentialSource]:
    secret = tmp_path / "password"
    secret.write_text("s3cret-pass\n")
    return {
        "basic.test": CredentialSource(CredentialsConfig("basic", "alice", SecretRef(file=secret))),
        "token.test": CredentialSource(CredentialsConfig("token", "alice", SecretRef(file=secret))),
        "pushy.test": CredentialSource(CredentialsConfig("token", "alice", SecretRef(file=secret))),
        "static.test": CredentialSource(
            CredentialsConfig("static", token=SecretRef(env="REGCACHE_TEST_TOKEN"))
        ),
    }


@pytest.fixture
async def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[UpstreamClient]:
    monkeypatch.setenv("REGCACHE_TEST_TOKEN", "from-env")
    table = sources(tmp_path)
    c = UpstreamClient(loopback, None, 5, 5, credentials=table.get, targets=LAB)
    yield c
    await c.close()


async def text(client: UpstreamClient, url: str, **headers: str) -> tuple[int, str]:
    reply = await client.fetch("GET", url, headers)
    try:
        return reply.status, (await reply.read(1 << 16)).decode()
    finally:
        reply.close()


async def test_basic_credentials_only_when_the_client_sends_none(server, client) -> None:  # type: ignore[no-untyped-def]
    srv, seen = server
    assert await text(client, f"http://basic.test:{srv.port}/v2/x/manifests/a") == (200, "basic ok")
    assert seen[-1][2] == ALICE
    await text(
        client, f"http://basic.test:{srv.port}/v2/x/manifests/a", Authorization="Bearer client-own"
    )
    assert seen[-1][2] == "Bearer client-own"  # the client's own go up unchanged


async def test_configured_credentials_never_reach_a_redirect_target(server, client) -> None:  # type: ignore[no-untyped-def]
    srv, seen = server
    status, _ = await text(client, f"http://basic.test:{srv.port}/v2/x/blobs/moved")
    assert status == 200 and seen[-1] == ("cdn.test", "/data", None)


async def test_token_flow_with_username_and_password_and_a_cached_token(server, client) -> None:  # type: ignore[no-untyped-def]
    srv, seen = server
    url = f"http://token.test:{srv.port}/v2/x/manifests/a"
    assert await text(client, url) == (200, "token ok")
    assert await text(client, url) == (200, "token ok")
    assert [p for _, p, _ in seen].count("/token") == 1  # cached per credential and scope
    assert seen[-1][2] == "Bearer granted"  # second time presented up front


async def test_static_token_from_the_environment(server, client) -> None:  # type: ignore[no-untyped-def]
    srv, _ = server
    assert await text(client, f"http://static.test:{srv.port}/v2/x/manifests/a") == (
        200,
        "static ok",
    )


async def test_helper_is_rerun_before_its_answer_expires(tmp_path: Path) -> None:
    script = tmp_path / "helper.py"
    script.write_text(
        "import json, pathlib\n"
        f"p = pathlib.Path({str(tmp_path / 'runs')!r})\n"
        "n = int(p.read_text()) + 1 if p.exists() else 1\n"
        "p.write_text(str(n))\n"
        "print(json.dumps({'username': 'AWS', 'password': f'pw{n}', 'expires_in_s': 120}))\n"
    )
    now = [0.0]
    source = CredentialSource(
        CredentialsConfig("basic", helper=(sys.executable, str(script))), clock=lambda: now[0]
    )
    first = await source.secret()
    assert (first.username, first.password) == ("AWS", "pw1")
    now[0] += 30
    assert (await source.secret()).password == "pw1" and source.helper_runs == 1
    now[0] += 40  # 120 s minus the 60 s margin have passed: re-run
    assert (await source.secret()).password == "pw2" and source.helper_runs == 2


async def test_secrets_never_reach_the_logs(
    server, client, caplog: pytest.LogCaptureFixture
) -> None:  # type: ignore[no-untyped-def]
    srv, _ = server
    with caplog.at_level(logging.DEBUG):
        await text(client, f"http://token.test:{srv.port}/v2/x/manifests/b")
        await text(client, f"http://basic.test:{srv.port}/v2/x/blobs/moved")
    logged = caplog.text + json.dumps([r.args for r in caplog.records], default=str)
    for secret in ("s3cret-pass", ALICE.split()[1], "granted", "from-env"):
        assert secret not in logged


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v2/x/blobs/uploads/"),  # a push starts
        ("PATCH", "/v2/x/blobs/uploads/u1"),
        ("PUT", "/v2/x/blobs/uploads/u1?digest=sha256:0"),
        ("PUT", "/v2/x/manifests/latest"),  # a tag overwritten
        ("DELETE", "/v2/x/manifests/sha256:0"),
        ("POST", "/v2/x/blobs/uploads/?mount=sha256:0&from=other/repo"),
        ("GET", "/v2/x/blobs/uploads/u1"),  # an upload's status: part of writing
        ("GET", "/v2/_catalog"),
        ("GET", "/token?scope=repository:x:push"),  # a client's own token request
    ],
)
async def test_configured_credentials_are_never_lent_to_writes(
    server, client, method, path
) -> None:  # type: ignore[no-untyped-def]
    srv, seen = server
    for host in ("basic.test", "token.test", "static.test"):
        reply = await client.send(method, f"http://{host}:{srv.port}{path}", {})
        reply.close()
        assert seen[-1][2] is None, (host, method, path)
    assert not any(p == "/token" and a is not None for _, p, a in seen)  # no token of ours


@pytest.mark.parametrize("path", ["/v2/", "/v2/x/manifests/a", "/v2/x/blobs/sha256:0",
                                  "/v2/x/tags/list", "/v2/x/referrers/sha256:0"])  # fmt: skip
async def test_configured_credentials_are_lent_to_reads(server, client, path) -> None:  # type: ignore[no-untyped-def]
    srv, seen = server
    for method in ("GET", "HEAD"):
        reply = await client.send(method, f"http://basic.test:{srv.port}{path}", {})
        reply.close()
        assert seen[-1][2] == ALICE, (method, path)


async def test_no_token_for_more_than_pull_is_fetched_with_configured_credentials(
    server, client
) -> None:  # type: ignore[no-untyped-def]
    srv, seen = server
    status, _ = await text(client, f"http://pushy.test:{srv.port}/v2/x/manifests/a")
    assert status == 401  # upstream's challenge, passed on
    assert not any(p == "/token" for _, p, _ in seen)


def stuck_helper(tmp_path: Path) -> tuple[Path, Path]:
    """A helper that never answers: it forks a `sleep` and then becomes one, noting both
    process ids (helper first, then its child) in a file."""
    pids = tmp_path / "pids"
    script = tmp_path / "docker-credential-stuck"
    script.write_text(f"#!/bin/sh\nsleep 60 &\necho $$ $! >> {pids}\nexec sleep 60\n")
    script.chmod(0o755)
    return script, pids


def noted(pids: Path) -> list[tuple[int, int]]:
    lines = pids.read_text().split("\n") if pids.exists() else []
    return [(int(a), int(b)) for a, b in (line.split() for line in lines if line)]


def process(pid: int) -> tuple[str, int] | None:
    """(state, parent) of a process, None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    state, parent = stat.rsplit(")", 1)[1].split()[:2]
    return state, int(parent)


def left_behind(helper: int, child: int) -> list[str]:
    """What a helper run left: running processes, or a zombie regcache did not reap (an
    orphaned child's zombie belongs to whoever adopted it)."""
    found = []
    for pid in (helper, child):
        seen = process(pid)
        if seen is not None and seen[0] != "Z":
            found.append(f"{pid} running")
    seen = process(helper)
    if seen is not None and seen[1] == os.getpid():
        found.append(f"{helper} unreaped")
    return found


@pytest.fixture
def reap_leftovers() -> Iterator[list[Path]]:
    """Kills whatever a failing test's stuck helpers left running."""
    files: list[Path] = []
    yield files
    for pids in files:
        for pair in noted(pids):
            for pid in pair:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


async def test_a_stuck_helper_is_killed_with_its_child_and_reaped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, reap_leftovers: list[Path]
) -> None:
    script, pids = stuck_helper(tmp_path)
    reap_leftovers.append(pids)
    config = CredentialsConfig("basic", helper=(str(script),))
    source = CredentialSource(config, helper_timeout_s=0.5)
    for _ in range(3):  # one after another: each run is cleaned up, none piles up
        with pytest.raises(CredentialError, match="docker-credential-stuck"):
            await source.secret()
    assert source.helper_runs == 3 and len(noted(pids)) == 3
    for helper, child in noted(pids):
        assert left_behind(helper, child) == []
    errors = [r for r in caplog.records if "helper-timeout" in r.getMessage()]
    assert len(errors) == 3 and all(r.levelno == logging.ERROR for r in errors)
    assert str(script) in errors[0].getMessage()


async def test_callers_waiting_on_a_stuck_helper_share_its_failure(
    tmp_path: Path, reap_leftovers: list[Path]
) -> None:
    script, pids = stuck_helper(tmp_path)
    reap_leftovers.append(pids)
    config = CredentialsConfig("basic", helper=(str(script),))
    source = CredentialSource(config, helper_timeout_s=0.5)
    results = await asyncio.gather(*(source.secret() for _ in range(5)), return_exceptions=True)
    assert all(isinstance(r, CredentialError) for r in results)
    assert source.helper_runs == 1  # not five runs of the timeout, one after another
    ((helper, child),) = noted(pids)
    assert left_behind(helper, child) == []


async def test_a_helper_whose_caller_is_cancelled_is_killed(
    tmp_path: Path, reap_leftovers: list[Path]
) -> None:
    script, pids = stuck_helper(tmp_path)
    reap_leftovers.append(pids)
    config = CredentialsConfig("basic", helper=(str(script),))
    source = CredentialSource(config, helper_timeout_s=30)
    asking = asyncio.create_task(source.secret())
    async with asyncio.timeout(10):
        while not noted(pids):
            await asyncio.sleep(0.01)
    asking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asking
    ((helper, child),) = noted(pids)
    assert left_behind(helper, child) == []
