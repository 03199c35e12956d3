"""Requests from the site's other gateways (`peers`), by their address or by the relay
header: the cache is told they were relayed (so it answers them itself, never relaying
them on); any other client's are not."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient

from appliance.admin.metrics import Metrics
from appliance.cache.ports import RELAYED
from appliance.oci.digest import Digest
from appliance.proxy.app import create_app
from tests.proxy.conftest import REGISTRY, site_for
from tests.proxy.fakes import FakeCache, FakePassThrough, stored

Client = Callable[[Any], Awaitable[TestClient[web.Request, web.Application]]]
BLOB = b"layer"


async def asked_from_peer(
    aiohttp_client: Client,
    tmp_path: Path,
    peers: frozenset[str],
    extra: dict[str, str] | None = None,
) -> bool:
    cache = FakeCache()
    cache.answers(stored(tmp_path, BLOB))
    app = create_app(cache, FakePassThrough(), site_for, Metrics(), peers=peers)
    client = await aiohttp_client(app)  # connects from 127.0.0.1
    response = await client.get(
        f"/v2/lib/app/blobs/{Digest.of(BLOB)}", headers={"Host": REGISTRY, **(extra or {})}
    )
    assert response.status == 200 and await response.read() == BLOB
    (asked,) = cache.asked
    return asked.target.from_peer


async def test_a_request_from_a_peer_is_marked_relayed(
    aiohttp_client: Client, tmp_path: Path
) -> None:
    assert await asked_from_peer(aiohttp_client, tmp_path, frozenset({"127.0.0.1", "10.0.0.2"}))


async def test_a_request_from_a_client_is_not(aiohttp_client: Client, tmp_path: Path) -> None:
    assert not await asked_from_peer(aiohttp_client, tmp_path, frozenset({"10.0.0.2"}))
    assert not await asked_from_peer(aiohttp_client, tmp_path, frozenset())


async def test_a_request_marked_relayed_is_answered_here(
    aiohttp_client: Client, tmp_path: Path
) -> None:
    # From a peer whose source address is not its member address: the header says it.
    marked = {RELAYED: "10.0.0.2:443"}
    assert await asked_from_peer(aiohttp_client, tmp_path, frozenset(), marked)
