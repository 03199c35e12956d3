"""`regcache serve` start-up and supervision: config mistakes exit 1 at once, a dying
background task stops the process instead of vanishing, and DNS and HTTPS serve while the
store is reconciled."""

from __future__ import annotations

import asyncio
import gc
import logging
import sqlite3
import ssl
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from dnslib import DNSRecord

from appliance import main
from appliance.config.model import load_config
from appliance.oci.digest import Digest
from appliance.store.files import FileBlobStore
from appliance.store.index import SqliteIndex
from appliance.store.reconcile import INDEX_NAME
from appliance.tls.ca import to_pem
from tests.cache.fakes import FakeReply, FakeUpstream
from tests.harness import (
    REGCACHE,
    REPO,
    Regcache,
    example_registries,
    free_port,
    notify_socket,
    query,
    received,
    udp_query,
    write_config,
)
from tests.proxy.fakes import FakePassThrough
from tests.store.stock import Walk, unindexed

DEADLINE_S = 30.0  # start-up takes well under a second; a hang never ends


def serve_until_exit(rc: Regcache) -> tuple[int, str, float]:
    """Run `regcache serve`; (exit code, stderr, seconds), failing if it does not exit."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [*REGCACHE, "--config", str(rc.config_path), "serve"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, stderr = proc.communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"regcache serve still running {DEADLINE_S:.0f} s after a config mistake")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, stderr, time.monotonic() - started


def assert_clear_failure(rc: Regcache, *named: str) -> None:
    code, stderr, _ = serve_until_exit(rc)
    assert code == 1, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("regcache: "), stderr
    for text in named:
        assert text in last, stderr
    assert "Traceback" not in stderr


def test_a_missing_admin_token_file_exits_1_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "admin-token"
    rc = write_config(
        tmp_path, admin={"listen": [f"127.0.0.1:{free_port()}"], "token": {"file": str(missing)}}
    )
    assert_clear_failure(rc, "admin.token", str(missing))


def test_an_unreadable_upstream_ca_bundle_exits_1_naming_it(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_text("not a certificate\n")
    rc = write_config(tmp_path, upstream={"ca_bundle": str(bundle)})
    assert_clear_failure(rc, "upstream.ca_bundle", str(bundle))


def test_an_unwritable_audit_path_exits_1_naming_it(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    audit = tmp_path / "a-file" / "audit.jsonl"  # its folder is a file: even root cannot
    rc = write_config(tmp_path, audit={"path": str(audit)})
    assert_clear_failure(rc, "audit.path", str(audit))


async def test_an_index_from_a_newer_regcache_is_refused_and_left_as_it_was(
    tmp_path: Path,
) -> None:
    """A downgrade: the index's schema is past what this regcache knows. It exits 1
    naming the file and both versions, and neither rebuilds nor touches the index."""
    rc = write_config(tmp_path)
    rc.state_dir.mkdir(parents=True, exist_ok=True)
    index = await SqliteIndex.open(rc.state_dir / INDEX_NAME)
    await index.close()
    db = sqlite3.connect(rc.state_dir / INDEX_NAME)
    db.execute("PRAGMA user_version = 99")  # as a newer regcache would leave it
    db.commit()
    db.close()

    def contents() -> tuple[bytes, bytes, list[str]]:  # the file, its WAL, and every name
        wal = rc.state_dir / f"{INDEX_NAME}-wal"
        names = sorted(p.name for p in rc.state_dir.glob(f"{INDEX_NAME}*"))
        kept = [n for n in names if not n.endswith(("-wal", "-shm"))]
        log = wal.read_bytes() if wal.exists() else b""
        return (rc.state_dir / INDEX_NAME).read_bytes(), log, kept

    before = contents()
    await asyncio.to_thread(
        assert_clear_failure, rc, str(rc.state_dir / INDEX_NAME), "schema version 99", "up to"
    )
    assert contents() == before  # not moved aside as corrupt, not migrated, no checkpoint
    verify = rc.cli("cache", "verify", check=False)  # the other commands say the same
    assert verify.returncode == 1 and "schema version 99" in verify.stderr, verify.stderr


async def test_a_background_task_that_dies_stops_regcache_with_exit_status_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(_metrics: object) -> None:
        raise RuntimeError("sampling bug")

    monkeypatch.setattr(main, "_sample_savings", broken)
    rc = write_config(tmp_path)
    caplog.set_level(logging.INFO)
    async with asyncio.timeout(20):
        assert await main.run(main.build(load_config(rc.config_path), rc.config_path)) == 1
    assert "regcache ready" in caplog.text
    assert "regcache stopping reason=task-failed task=savings-history" in caplog.text
    assert "RuntimeError: sampling bug" in caplog.text and "regcache stopped" in caplog.text


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    """`run` freezes the objects start-up made; in this test process, undo that after."""
    yield
    gc.unfreeze()


async def test_what_start_up_made_is_frozen_out_of_the_collectors_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def stop_at_once(_metrics: object) -> None:
        raise RuntimeError("stop")

    monkeypatch.setattr(main, "_sample_savings", stop_at_once)
    rc = write_config(tmp_path)
    gc.unfreeze()
    async with asyncio.timeout(20):
        assert await main.run(main.build(load_config(rc.config_path), rc.config_path)) == 1
    assert gc.get_freeze_count() > 0


@dataclass
class WayOut(FakePassThrough):
    """The upstream client faked at the network's edge: what the proxy relays (`send`)
    and what the cache asks (`fetch`), both scripted."""

    asked: FakeUpstream = field(default_factory=FakeUpstream)

    async def fetch(self, method: str, url: str, headers: Mapping[str, str]) -> FakeReply:
        return await self.asked.fetch(method, url, headers)

    async def fetch_anonymous(self, method: str, url: str, accept: str | None = None) -> FakeReply:
        return await self.asked.fetch_anonymous(method, url, accept)

    async def close(self) -> None:
        return None


async def resolved(port: int, name: str) -> list[str]:
    reply = await asyncio.to_thread(udp_query, port, query(name).pack())
    return [str(rr.rdata) for rr in DNSRecord.parse(reply).rr]


async def test_dns_and_https_serve_while_a_lost_index_is_rebuilt_then_the_cache_takes_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue #15, defect 2: re-hashing a large store after an index rebuild outlasted
    systemd's start timeout while DNS and HTTPS stayed down."""
    registries = example_registries()
    for registry in registries:
        if registry["name"] == "quay.io":
            registry["fail_open"] = False
    rc = write_config(tmp_path, registries=registries, resolve={"ghcr.io": ["192.0.2.7"]})
    files = FileBlobStore(rc.state_dir)
    files.prepare()
    layers = {unindexed(files, f"layer {i}".encode() * 4096): f"layer {i}" for i in range(20)}
    damaged = Digest.of(b"what the name says")
    files.path_for(damaged).parent.mkdir(parents=True, exist_ok=True)
    files.path_for(damaged).write_bytes(b"bit rot")
    parts = main.build(load_config(rc.config_path), rc.config_path)
    walk = Walk(parts.files, monkeypatch)  # reconciliation is held inside its first re-hash
    way_out = WayOut()
    blob = next(iter(layers))
    url = f"https://ghcr.io/v2/team/app/blobs/{blob}"
    way_out.add("GET", url, 200, b"upstream's bytes", Content_Length="16")
    way_out.asked.add("HEAD", url, 200, Docker_Content_Digest=str(blob))
    monkeypatch.setattr(main, "upstream_client", lambda *_a, **_k: way_out)
    stop = asyncio.Event()
    monkeypatch.setattr(main, "on_stop", lambda _stack: stop)
    admin = f"http://{parts.config.admin.listen[0]}"
    trust = ssl.create_default_context(cadata=to_pem([parts.ca.cert]).decode())
    caplog.set_level(logging.INFO)
    with notify_socket(monkeypatch) as systemd:
        running = asyncio.create_task(main.run(parts))
        try:
            async with aiohttp.ClientSession() as http:

                async def pull() -> tuple[int, bytes]:
                    async with http.get(
                        f"https://127.0.0.1:{rc.https_port}/v2/team/app/blobs/{blob}",
                        headers={"Host": "ghcr.io"}, server_hostname="ghcr.io", ssl=trust,
                    ) as reply:  # fmt: skip
                        return reply.status, await reply.read()

                async def readiness() -> tuple[int, list[str]]:
                    async with http.get(f"{admin}/readyz") as reply:
                        return reply.status, (await reply.json())["problems"]

                try:
                    ready = await received(systemd)
                except TimeoutError:
                    pytest.fail("no READY=1 while the store is reconciled: start-up waits for it")
                assert ready.startswith("READY=1\nSTATUS=reconciling the store"), ready
                assert walk.inside.is_set() and not walk.go_on.is_set()
                # (a) DNS answers: fail-open registries with their real address, the others
                # intercepted; HTTPS answers...
                assert await resolved(rc.dns_port, "ghcr.io") == ["192.0.2.7"]
                assert await resolved(rc.dns_port, "quay.io") == ["127.0.0.1"]
                # (b) ...relaying upstream's answer, uncached, though the blob is on disk.
                assert await pull() == (200, b"upstream's bytes")
                assert [(s.method, s.url) for s in way_out.sent] == [("GET", url)]
                # (c) not ready, saying how far reconciliation has come.
                status, problems = await readiness()
                assert status == 503
                assert "store: reconciling checked=0 of=21 bytes=0 " in " ".join(problems)
                async with http.get(f"{admin}/") as page:
                    assert "NOT READY: store: reconciling checked=0 of=21" in await page.text()
                walk.go_on.set()
                while (message := await received(systemd)) != "STATUS=serving":
                    assert message.startswith("STATUS=reconciling"), message
                assert await readiness() == (200, [])
                # The cache serves, without a restart: the blob now comes from the store.
                assert await resolved(rc.dns_port, "ghcr.io") == ["127.0.0.1"]
                assert await pull() == (200, layers[blob].encode() * 4096)
                assert len(way_out.sent) == 1 and way_out.asked.count("HEAD") == 1
        finally:
            walk.go_on.set()
            stop.set()
            async with asyncio.timeout(30):
                assert await running == 0
    # (d) the store agrees with its files: every good blob indexed, the damaged one gone.
    index = await SqliteIndex.open(rc.state_dir / INDEX_NAME)
    try:
        assert set(await index.sizes()) == {str(d) for d in layers}
    finally:
        await index.close()
    assert not files.path_for(damaged).exists()
    assert len(list(files.quarantine.glob("*.why"))) == 1
    assert "cache ready files=21 reindexed=20" in caplog.text
