"""`regcache serve` over a store it cannot reconcile at start ("database or disk is full"):
it serves on (DNS fail-open, HTTPS passing through), says why in `/readyz` and on the
status page, retries, and lets the cache serve once a retry succeeds. It used to exit 1
at every start until systemd gave up, leaving the build network without DNS."""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from dnslib import DNSRecord

from appliance import main
from appliance.config.model import load_config
from appliance.runtime.startup import StoreStartup
from appliance.store.files import FileBlobStore
from appliance.store.index import SqliteIndex
from appliance.store.reconcile import INDEX_NAME
from tests.harness import query, udp_query, write_config
from tests.store.stock import unindexed


async def resolved(port: int, name: str) -> list[str]:
    reply = await asyncio.to_thread(udp_query, port, query(name).pack())
    return [str(rr.rdata) for rr in DNSRecord.parse(reply).rr]


async def until(condition: Callable[[], bool], running: asyncio.Task[int], what: str) -> None:
    """Wait for `condition` while regcache runs (a safety net of 30 s, polled)."""
    async with asyncio.timeout(30):
        while not condition():
            if running.done():
                pytest.fail(f"regcache ended waiting for {what}: {running.exception()!r}")
            await asyncio.sleep(0.02)


async def test_a_failing_reconciliation_keeps_regcache_serving_and_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    rc = write_config(tmp_path, resolve={"ghcr.io": ["192.0.2.7"]})
    files = FileBlobStore(rc.state_dir)
    files.prepare()
    layers = {str(unindexed(files, f"layer {i}".encode())) for i in range(3)}
    full = True
    real = SqliteIndex.restore

    async def restore(self: SqliteIndex, *args: Any) -> bool:
        if full:
            raise sqlite3.OperationalError("database or disk is full")
        return await real(self, *args)

    monkeypatch.setattr(SqliteIndex, "restore", restore)
    quick = functools.partial(StoreStartup, retry_s=0.05, max_retry_s=0.1)
    monkeypatch.setattr(main, "StoreStartup", quick)
    parts = main.build(load_config(rc.config_path), rc.config_path)
    stop = asyncio.Event()
    monkeypatch.setattr(main, "on_stop", lambda _stack: stop)
    admin = f"http://{parts.config.admin.listen[0]}"
    caplog.set_level(logging.INFO)
    running = asyncio.create_task(main.run(parts))
    try:
        async with aiohttp.ClientSession() as http:

            async def readiness() -> tuple[int, list[str]]:
                async with http.get(f"{admin}/readyz") as reply:
                    return reply.status, (await reply.json())["problems"]

            await until(lambda: "regcache ready" in caplog.text, running, "its listeners")
            await until(
                lambda: caplog.text.count("store reconcile-failed") >= 3, running, "retries"
            )
            # Serving on: DNS answers (fail-open: the real address), not ready, saying why.
            assert await resolved(rc.dns_port, "ghcr.io") == ["192.0.2.7"]
            status, problems = await readiness()
            assert status == 503
            store = [p for p in problems if p.startswith("store: reconcil")]
            assert len(store) == 1, problems
            assert "OperationalError: database or disk is full" in store[0]
            async with http.get(f"{admin}/") as page:
                text = await page.text()
                assert "NOT READY: store: reconcil" in text
                assert "OperationalError: database or disk is full" in text
            full = False  # room again: the next retry reconciles, the cache takes over
            async with asyncio.timeout(30):
                while (await readiness()) != (200, []):
                    assert not running.done()
                    await asyncio.sleep(0.02)
            assert await resolved(rc.dns_port, "ghcr.io") == ["127.0.0.1"]
    finally:
        stop.set()
        async with asyncio.timeout(30):
            assert await running == 0
    index = await SqliteIndex.open(rc.state_dir / INDEX_NAME)
    try:
        assert set(await index.sizes()) == layers
    finally:
        await index.close()
    assert "cache ready files=3 reindexed=3" in caplog.text
