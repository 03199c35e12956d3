"""A write through regcache drops the 404s it remembered for that repository, by every
name the repository goes by, before the writer hears of its write: push then pull, and
cosign's sign then verify, see what was pushed (issue #15, defect 3)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession

from appliance.oci.mediatypes import DOCKER_MANIFEST
from appliance.proxy.app import start_runner
from appliance.proxy.loops import ServingLoops
from tests.proxy.registry import HOST, HUB, HUB_ALIAS, TTL_HOST, Stack, manifest, stack

PUSHED = manifest("pushed")


async def push(
    s: Stack, path: str, host: str = HOST, status: int = 201, body: bytes = PUSHED.body
) -> None:
    response = await s.ask(
        path, "PUT", host, body, Content_Type=DOCKER_MANIFEST, Authorization="Bearer t"
    )
    assert response.status == status, await response.text()


async def pull_fails_and_is_remembered(s: Stack, path: str, host: str = HOST) -> None:
    """Two 404s, the second from memory (upstream is not asked again)."""
    for _ in range(2):
        response = await s.ask(path, host=host)
        assert response.status == 404, await response.text()
    assert s.registry.asked("GET", path) == 1  # the first pull's, nothing more


async def test_a_tag_pushed_through_regcache_is_pulled_at_once(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    async with stack(tmp_path, aiohttp_client) as s:
        path = "/v2/team/app/manifests/v2"
        await pull_fails_and_is_remembered(s, path)
        await push(s, path)
        response = await s.ask(path)
        assert response.status == 200, await response.text()
        assert await response.read() == PUSHED.body
        assert response.headers["Docker-Content-Digest"] == str(PUSHED.digest)


async def test_a_digest_and_a_cosign_tag_are_forgotten_too_head_and_get(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    """The gate's and upstream's 404s by digest, and a signature tag's HEAD."""
    async with stack(tmp_path, aiohttp_client) as s:
        by_digest = f"/v2/team/app/manifests/{PUSHED.digest}"
        sig = f"/v2/team/app/manifests/sha256-{PUSHED.digest.hex}.sig"
        await pull_fails_and_is_remembered(s, by_digest)
        for _ in range(2):
            assert (await s.ask(sig, "HEAD")).status == 404
        assert s.registry.asked("HEAD", sig) == 1
        await push(s, sig)
        head = await s.ask(sig, "HEAD")
        assert head.status == 200
        assert head.headers["Content-Length"] == str(len(PUSHED.body))
        response = await s.ask(by_digest)
        assert response.status == 200 and await response.read() == PUSHED.body


@pytest.mark.parametrize(
    ("pulled_host", "pulled", "pushed_host", "pushed"),
    [
        (HUB, "alpine", HUB, "library/alpine"),  # Docker Hub's official-image names
        (HUB, "library/alpine", HUB, "alpine"),
        (HUB, "library/alpine", HUB_ALIAS, "library/alpine"),  # one registry, two hosts
        (HUB_ALIAS, "alpine", HUB, "library/alpine"),
    ],
)
async def test_a_push_by_another_name_of_the_repository_is_seen(
    tmp_path: Path, aiohttp_client: Any, pulled_host: str, pulled: str, pushed_host: str,
    pushed: str,
) -> None:  # fmt: skip
    async with stack(tmp_path, aiohttp_client) as s:
        await pull_fails_and_is_remembered(s, f"/v2/{pulled}/manifests/v9", pulled_host)
        await push(s, f"/v2/{pushed}/manifests/v9", pushed_host)
        response = await s.ask(f"/v2/{pulled}/manifests/v9", host=pulled_host)
        assert response.status == 200 and await response.read() == PUSHED.body


async def test_a_failed_write_or_one_elsewhere_keeps_what_is_remembered(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    async with stack(tmp_path, aiohttp_client) as s:
        path = "/v2/team/app/manifests/v2"
        await pull_fails_and_is_remembered(s, path)
        await push(s, path, status=400, body=b"not a manifest")  # refused upstream
        await push(s, "/v2/team/other/manifests/v2")
        await push(s, "/v2/library/app/manifests/v2")  # not an alias off Docker Hub
        chunk = await s.ask("/v2/team/app/blobs/uploads/u1", "PATCH", HOST, b"x" * 10)
        assert chunk.status == 202  # a chunk of an upload: nothing pullable changed
        assert (await s.ask(path)).status == 404
        assert s.registry.asked("GET", path) == 1


async def test_a_push_through_another_serving_loop_is_seen_by_the_next_pull(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    """The remembered 404s live on the cache's loop; a push served on another loop drops
    them before its 201 goes out (not in a batch sent later)."""
    async with stack(tmp_path, aiohttp_client) as s:
        path = "/v2/team/app/manifests/v2"
        await pull_fails_and_is_remembered(s, path)
        loops = ServingLoops(1, s.make_app)
        await loops.start(start_runner)
        try:
            ((loop, protocol),) = loops.targets()
            listening = asyncio.run_coroutine_threadsafe(
                loop.create_server(protocol, "127.0.0.1", 0), loop
            )
            server = await asyncio.wrap_future(listening)
            port = server.sockets[0].getsockname()[1]
            async with ClientSession() as client:
                pushed = await client.put(
                    f"http://127.0.0.1:{port}{path}", data=PUSHED.body,
                    headers={"Host": HOST, "Content-Type": DOCKER_MANIFEST},
                )  # fmt: skip
                assert pushed.status == 201
            response = await s.ask(path)
            assert response.status == 200 and await response.read() == PUSHED.body
            loop.call_soon_threadsafe(server.close)
        finally:
            await loops.close()
        assert not [t for t in threading.enumerate() if t.name.startswith("https-loop")]


async def test_a_tag_moved_by_a_push_is_asked_again_within_its_ttl(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    """With `tag_ttl_s`, a tag is answered from the store between checks; a push through
    regcache may move it, so the next pull asks upstream (by this name or another)."""
    async with stack(tmp_path, aiohttp_client) as s:
        before = manifest("before")
        s.registry.put("team/app", "v1", before)
        path = "/v2/team/app/manifests/v1"
        for _ in range(2):  # the second from the store, within the TTL
            response = await s.ask(path, host=TTL_HOST)
            assert await response.read() == before.body
        assert s.registry.asked("HEAD", path) + s.registry.asked("GET", path) == 2
        await push(s, path, TTL_HOST)
        response = await s.ask(path, host=TTL_HOST)
        assert response.status == 200 and await response.read() == PUSHED.body
        response = await s.ask(path, host=TTL_HOST)  # validated after the push: fresh again
        assert await response.read() == PUSHED.body


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/v2/frozen/app/manifests/v1"),
        ("DELETE", "/v2/frozen/app/manifests/v1"),
        ("POST", "/v2/frozen/app/blobs/uploads/"),
        ("PATCH", "/v2/frozen/app/blobs/uploads/some-uuid"),
        ("PUT", f"/v2/frozen/app/blobs/uploads/some-uuid?digest={PUSHED.digest}"),
        ("POST", "/v2/frozen/app/blobs/uploads/?mount=sha256:x&from=team/app"),
        ("DELETE", f"/v2/frozen/app/blobs/{PUSHED.digest}"),
    ],
)
async def test_a_denied_push_is_refused_at_once_and_never_reaches_upstream(
    tmp_path: Path, aiohttp_client: Any, method: str, path: str
) -> None:
    async with stack(tmp_path, aiohttp_client) as s:
        response = await s.ask(path, method, body=b"{}", Authorization="Bearer t")
        assert response.status == 403  # not 405: docker retries those
        error = (await response.json())["errors"][0]
        assert error["code"] == "DENIED"
        assert "reg.test/frozen/app" in error["message"] and "registries[].push" in error["message"]
        assert s.registry.seen == []


async def test_pulls_of_a_push_denied_repository_and_pushes_elsewhere_go_on(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    async with stack(tmp_path, aiohttp_client) as s:
        s.registry.put("frozen/app", "v1", PUSHED)
        response = await s.ask("/v2/frozen/app/manifests/v1")
        assert response.status == 200 and await response.read() == PUSHED.body
        await push(s, "/v2/team/app/manifests/v1")  # another repository: passes through


async def test_a_denied_official_image_is_denied_by_either_of_its_names(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    async with stack(tmp_path, aiohttp_client) as s:
        for path in ("/v2/library/busybox/manifests/1", "/v2/busybox/manifests/1"):
            for host in (HUB, HUB_ALIAS):
                response = await s.ask(path, "PUT", host, PUSHED.body, Authorization="Bearer t")
                assert response.status == 403, (host, path)
        await push(s, "/v2/library/hello/manifests/1", HUB)


@pytest.mark.parametrize(
    "path", ["/v2//frozen/app/blobs/uploads/", "/v2/frozen/app//manifests/v1",
             "/api/v2.0/projects/frozen/repositories/app/artifacts"],
)  # fmt: skip
async def test_on_a_registry_with_deny_rules_a_write_of_no_known_repository_is_refused(
    tmp_path: Path, aiohttp_client: Any, path: str
) -> None:
    """Fail closed: a path regcache cannot name a repository for may still reach a denied
    one upstream (a proxy merging slashes, a vendor API)."""
    async with stack(tmp_path, aiohttp_client) as s:
        response = await s.ask(path, "POST", body=b"{}", Authorization="Bearer t")
        assert response.status in (400, 403), await response.text()
        assert s.registry.seen == []
        elsewhere = await s.ask(path, "POST", TTL_HOST, b"{}", Authorization="Bearer t")
        assert elsewhere.status not in (403,)  # no deny rule there: it passes on
