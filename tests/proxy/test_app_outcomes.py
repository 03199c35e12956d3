"""What a manifest answer counts as, over the whole path (real proxy, cache, store, index,
metrics and upstream client against a loopback registry): a hit is an answer whose bytes
came from the store, and the metrics, the bytes served, the audit log, the status page
and the index's hit counts all agree (issue #15, defect 13)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from appliance.admin.status import parse
from tests.proxy.registry import HOST, Stack, manifest, stack

IMAGE = manifest("image")
SIZE = len(IMAGE.body)


async def pull(s: Stack, path: str) -> dict[str, Any]:
    """GET `path`, check the bytes; the audit line it wrote."""
    response = await s.ask(path)
    assert response.status == 200 and await response.read() == IMAGE.body
    entry = s.audit[-1]
    assert (entry["status"], entry["bytes"], entry["digest"]) == (200, SIZE, str(IMAGE.digest))
    return entry


def figures(s: Stack) -> tuple[float, float, float | None]:
    """(hits, misses, hit ratio) as the status page and `regcache status` read them."""
    registry = parse(s.metrics.render().decode(), True, []).registries[HOST]
    return registry.hits, registry.misses, registry.hit_ratio


async def test_a_manifest_fetched_upstream_is_a_miss_and_one_from_the_store_a_hit(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    async with stack(tmp_path, aiohttp_client) as s:
        s.registry.put("team/app", "v1", IMAGE)
        first = await pull(s, "/v2/team/app/manifests/v1")  # HEAD, then GET upstream
        assert first["outcome"] == "miss"
        assert (s.answers("miss"), s.answers("hit")) == (1, 0)
        assert (s.served("store"), s.served("upstream")) == (0, SIZE)
        assert figures(s) == (0, 1, 0.0)
        assert await s.index.hits(IMAGE.digest) == 0
        assert (await s.index.served())[HOST] == (0, SIZE)

        second = await pull(s, "/v2/team/app/manifests/v1")  # revalidated by HEAD
        assert s.registry.asked("GET", f"/v2/team/app/manifests/{IMAGE.digest}") == 1
        assert second["outcome"] == "hit"
        assert (s.answers("miss"), s.answers("hit")) == (1, 1)
        assert (s.served("store"), s.served("upstream")) == (SIZE, SIZE)
        assert figures(s) == (1, 1, 0.5)
        assert await s.index.hits(IMAGE.digest) == 1
        assert (await s.index.served())[HOST] == (SIZE, SIZE)


async def test_a_manifest_fetched_by_digest_is_a_miss_too(
    tmp_path: Path, aiohttp_client: Any
) -> None:
    async with stack(tmp_path, aiohttp_client) as s:
        s.registry.put("team/app", "v1", IMAGE)
        by_digest = f"/v2/team/app/manifests/{IMAGE.digest}"
        assert (await pull(s, by_digest))["outcome"] == "miss"
        assert (await pull(s, by_digest))["outcome"] == "hit"
        assert (await pull(s, "/v2/team/app/manifests/v1"))["outcome"] == "hit"
        assert figures(s)[:2] == (2, 1)
        assert (s.served("store"), s.served("upstream")) == (2 * SIZE, SIZE)
