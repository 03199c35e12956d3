"""`regcache mirror …` through the command line on a real store: status (drift, upstream
deletions, runs, budgets), pin/unpin, rollback, history, add --from-cache, and sync/diff
answered by a stand-in for the running process that takes requests from the index."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from appliance import cli
from appliance.cache.ports import TagRow
from appliance.mirror.records import BudgetSeen, Check, EntryRun, MirroredTag, Place, Request
from appliance.oci.digest import Digest
from appliance.oci.mediatypes import OCI_MANIFEST
from appliance.store.files import FileBlobStore
from appliance.store.index import SqliteIndex
from appliance.store.reconcile import INDEX_NAME
from tests.harness import write_config
from tests.store.stock import Store

MIRROR = {
    "defaults": {"keep_backups": 2},
    "entries": [
        {"source": "alpine:3.20", "backup": "{tag}-was-{date:%Y%m%d}"},
        {"source": "ghcr.io/org/app", "tags": {"allow": ["v.*"]}, "access": "upstream"},
        {"source": "quay.io/org/tool:1.0"},
    ],
}
ALPINE = Place("docker.io", "library/alpine", "3.20")
V1 = Place("ghcr.io", "org/app", "v1")
JAN, FEB, MAR = (datetime(2026, m, 1, tzinfo=UTC).timestamp() for m in (1, 2, 3))


@dataclass
class Ran:
    code: int
    out: str
    err: str


@dataclass
class Lab:
    config: Path
    store: Store
    capsys: pytest.CaptureFixture[str]

    @property
    def index(self) -> SqliteIndex:
        return self.store.index

    async def cli(self, *args: str) -> Ran:
        """`regcache --config … mirror ARGS` in a thread: it runs its own event loop."""
        self.capsys.readouterr()
        code = await asyncio.to_thread(_main, ["--config", str(self.config), "mirror", *args])
        out, err = self.capsys.readouterr()
        return Ran(code, out, err)

    async def json(self, *args: str) -> Any:
        ran = await self.cli(*args, "--json")
        assert ran.code == 0, ran
        return json.loads(ran.out)

    async def images(self, count: int) -> list[Digest]:
        """Manifests in the store, each with a layer of its own."""
        digests = []
        for i in range(count):
            layer = await self.store.blob(f"layer {i} {time.time()}".encode())
            digests.append(Digest.parse(await self.store.manifest([layer])))
        return digests

    async def mirrored(self, place: Place, entry: str, *moves: tuple[Digest, float]) -> None:
        """The tag served each digest from its time on, as syncs moved it."""
        before = None
        for digest, at in moves:
            tag = MirroredTag(place, entry, digest, OCI_MANIFEST, 100, at, "network")
            backup = f"{place.tag}-was-{datetime.fromtimestamp(at, UTC):%Y%m%d}"
            assert await self.index.move_tag(
                tag, "sync", expect=before, backup=backup, keep_backups=2
            )
            before = digest


@pytest.fixture
async def lab(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> AsyncIterator[Lab]:
    rc = write_config(tmp_path, mirror=MIRROR)
    files = FileBlobStore(rc.state_dir)
    files.prepare()
    index = await SqliteIndex.open(rc.state_dir / INDEX_NAME)
    yield Lab(rc.config_path, Store(rc.state_dir, files, index), capsys)
    await index.close()


async def test_status_shows_each_entry_its_tags_drift_runs_and_budgets(lab: Lab) -> None:
    a, b, c = await lab.images(3)
    await lab.mirrored(ALPINE, "alpine:3.20", (a, JAN), (b, FEB))
    await lab.mirrored(V1, "ghcr.io/org/app", (c, JAN))
    await lab.index.record_check(Check(ALPINE, "alpine:3.20", a, MAR))
    await lab.index.record_check(Check(V1, "ghcr.io/org/app", None, MAR, gone=True))
    await lab.index.record_run(EntryRun("alpine:3.20", "idle", MAR, MAR, MAR + 3600))
    await lab.index.record_budget(BudgetSeen("docker.io", "anonymous", 87, 100, 21600, MAR))
    status = await lab.json("status")
    entries = {e["source"]: e for e in status["entries"]}
    assert list(entries) == ["alpine:3.20", "ghcr.io/org/app", "quay.io/org/tool:1.0"]
    [alpine] = entries["alpine:3.20"]["tags"]
    assert (alpine["serving"], alpine["upstream"], alpine["drift"]) == (str(b), str(a), "yes")
    assert alpine["backups"] == 1 and alpine["pinned"] is None
    assert entries["alpine:3.20"]["run"]["next_run_s"] == MAR + 3600
    [v1] = entries["ghcr.io/org/app"]["tags"]
    assert (v1["tag"], v1["serving"], v1["drift"]) == ("v1", str(c), "gone")
    assert entries["ghcr.io/org/app"]["access"] == "upstream"
    assert entries["quay.io/org/tool:1.0"]["tags"] == []
    assert status["budgets"] == [
        {"registry": "docker.io", "credential": "anonymous", "remaining": 87, "limit": 100,
         "window_s": 21600, "seen_s": MAR},
    ]  # fmt: skip
    table = (await lab.cli("status")).out
    rows = {line.split()[0]: line for line in table.splitlines() if line}
    assert "3.20" in rows["alpine:3.20"] and " yes " in rows["alpine:3.20"]
    assert "2026-03-01 01:00" in rows["alpine:3.20"]  # the next run
    assert " gone " in rows["ghcr.io/org/app"] and "not copied yet" in rows["quay.io/org/tool:1.0"]
    assert "deleted upstream, still served from the mirror: ghcr.io/org/app:v1" in table
    assert "87/100" in rows["docker.io"] and "6h" in rows["docker.io"]


async def test_status_with_nothing_mirrored_says_how_to_begin(lab: Lab) -> None:
    await lab.index.add_entry("ghcr.io/org/extra:1", "network")
    ran = await lab.cli("status")
    assert ran.code == 0 and "ghcr.io/org/extra:1" in ran.out
    assert "rate-limit budgets: none seen yet" in ran.out


async def test_pin_holds_a_tag_and_unpin_releases_it(lab: Lab) -> None:
    a, b = await lab.images(2)
    await lab.mirrored(ALPINE, "alpine:3.20", (a, JAN), (b, FEB))  # a kept as a backup
    pinned = await lab.json("pin", "alpine:3.20")
    assert pinned == {"tag": str(ALPINE), "serving": str(b), "pinned": str(b),
                      "message": f"{ALPINE} pinned at {b}"}  # fmt: skip
    moved = await lab.json("pin", f"docker.io/library/alpine:3.20@{a}")
    assert (moved["serving"], moved["pinned"]) == (str(a), str(a))
    history = await lab.json("history", "alpine:3.20")
    last = history["moves"][-1]
    # The entry's own backup template, dated by the move (now).
    assert (last["reason"], last["old"], last["new"]) == ("pin", str(b), str(a))
    assert last["backup"] == f"3.20-was-{datetime.now(UTC):%Y%m%d}"
    ran = await lab.cli("unpin", "alpine:3.20")
    assert ran.code == 0 and "unpinned" in ran.out
    [tag] = (await lab.json("status"))["entries"][0]["tags"]
    assert (tag["serving"], tag["pinned"]) == (str(a), None)  # until the next sync


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("pin", "example.com/org/app:1"), "'example.com' is not an API host"),
        (("pin", "alpine:edge"), "docker.io/library/alpine:edge is not mirrored"),
        (("pin", "alpine"), "name a tag"),
        (("unpin", f"alpine:3.20@sha256:{'a' * 64}"), "without a digest"),
        (("rollback", "Alpine:3.20"), "invalid repository name"),
        (("rollback", "alpine:3.20", "--steps", "5"), "has 0 earlier digests, not 5"),
        (("history", "ghcr.io/org/app:nope"), "is not mirrored"),
    ],
)
async def test_a_wrong_name_or_an_impossible_action_exits_2_saying_why(
    lab: Lab, args: tuple[str, ...], words: str
) -> None:
    [a] = await lab.images(1)
    await lab.mirrored(ALPINE, "alpine:3.20", (a, JAN))
    ran = await lab.cli(*args)
    assert ran.code == 2 and ran.err.startswith("regcache: ") and words in ran.err, ran


async def test_rollback_by_steps_to_a_digest_and_to_a_date(lab: Lab) -> None:
    a, b, c = await lab.images(3)
    await lab.mirrored(ALPINE, "alpine:3.20", (a, JAN), (b, FEB), (c, MAR))
    back = await lab.json("rollback", "alpine:3.20")
    assert (back["old"], back["new"], back["pinned"]) == (str(c), str(b), str(b))
    back = await lab.json("rollback", "alpine:3.20", "--to", str(c))
    assert (back["old"], back["new"]) == (str(b), str(c))
    ran = await lab.cli("rollback", "alpine:3.20", "--to", "2026-02-20")
    assert ran.code == 0 and f"now serves {b}" in ran.out and "pinned there" in ran.out
    [tag] = (await lab.json("status"))["entries"][0]["tags"]
    assert (tag["serving"], tag["pinned"]) == (str(b), str(b))
    ran = await lab.cli("rollback", "alpine:3.20", "--to", "2026-01-20")  # a: pruned
    assert ran.code == 2 and "older than the backups kept" in ran.err
    ran = await lab.cli("rollback", "alpine:3.20", "--steps", "2", "--to", str(a))
    assert ran.code == 2 and "not allowed with argument" in ran.err


async def test_history_lists_every_move_oldest_first_in_utc(lab: Lab) -> None:
    a, b = await lab.images(2)
    await lab.mirrored(ALPINE, "alpine:3.20", (a, JAN), (b, FEB))
    moves = (await lab.json("history", "docker.io/library/alpine:3.20"))["moves"]
    assert [(m["at"], m["reason"], m["old"], m["new"], m["backup"]) for m in moves] == [
        ("2026-01-01T00:00:00+00:00", "sync", None, str(a), None),
        ("2026-02-01T00:00:00+00:00", "sync", str(a), str(b), "3.20-was-20260201"),
    ]
    lines = (await lab.cli("history", "alpine:3.20")).out.splitlines()
    assert lines[0] == f"history of {ALPINE} (oldest first)"
    assert lines[2].split() == ["2026-01-01T00:00:00+00:00", "sync", "-", str(a), "-"]
    assert lines[3].split() == ["2026-02-01T00:00:00+00:00", "sync", str(a), str(b),
                                "3.20-was-20260201"]  # fmt: skip


async def cached(lab: Lab, host: str, repository: str, tag: str, digest: Digest) -> None:
    row = TagRow(digest, OCI_MANIFEST, 100, time.time())
    await lab.index.set_tag(host, repository, tag, OCI_MANIFEST, row)


async def test_add_from_cache_promotes_a_public_tag_for_everyone(lab: Lab) -> None:
    old, new = await lab.images(2)
    await cached(lab, "index.docker.io", "library/redis", "7", old)
    await cached(lab, "registry-1.docker.io", "redis", "7", new)  # fresher, the bare name
    await lab.index.set_public_status("registry-1.docker.io", "redis", True, time.time())
    ran = await lab.cli("add", "--from-cache", "redis:7")
    assert ran.code == 0 and "access network (upstream serves it to anyone)" in ran.out
    entries = {e["source"]: e for e in (await lab.json("status"))["entries"]}
    [tag] = entries["docker.io/library/redis:7"]["tags"]
    assert (tag["serving"], tag["access"]) == (str(new), "network")
    assert await lab.index.added_entries() == [("docker.io/library/redis:7", "network")]
    moves = (await lab.json("history", "redis:7"))["moves"]
    assert [(m["reason"], m["old"], m["new"]) for m in moves] == [("add", None, str(new))]
    again = await lab.cli("add", "--from-cache", "docker.io/library/redis:7")
    assert again.code == 2 and "already mirrored" in again.err


async def test_add_from_cache_keeps_a_private_tag_to_whom_upstream_admits(lab: Lab) -> None:
    [digest] = await lab.images(1)
    await cached(lab, "ghcr.io", "org/secret", "v1", digest)
    added = await lab.json("add", "--from-cache", "ghcr.io/org/secret:v1")
    assert (added["access"], added["digest"]) == ("upstream", str(digest))
    assert "not known to be public" in added["why"]
    await cached(lab, "ghcr.io", "org/open", "v1", digest)
    added = await lab.json("add", "--from-cache", "ghcr.io/org/open:v1", "--access", "network")
    assert (added["access"], added["why"]) == ("network", "as asked")


async def test_add_from_cache_of_a_configured_image_keeps_its_entry(lab: Lab) -> None:
    [digest] = await lab.images(1)
    await cached(lab, "quay.io", "org/tool", "1.0", digest)
    added = await lab.json("add", "--from-cache", "quay.io/org/tool:1.0")
    assert added["entry"] == "quay.io/org/tool:1.0" and await lab.index.added_entries() == []
    entries = {e["source"]: e for e in (await lab.json("status"))["entries"]}
    assert [t["tag"] for t in entries["quay.io/org/tool:1.0"]["tags"]] == ["1.0"]


async def test_add_from_cache_refuses_what_the_cache_does_not_hold(lab: Lab) -> None:
    ran = await lab.cli("add", "--from-cache", "redis:7")
    assert ran.code == 2 and "is not in the cache" in ran.err
    await cached(lab, "ghcr.io", "org/app", "v9", Digest.of(b"never stored"))
    ran = await lab.cli("add", "--from-cache", "ghcr.io/org/app:v9")
    assert ran.code == 2 and "not in the store" in ran.err
    assert await lab.index.mirrored_tags() == []


Answer = Callable[[Request], dict[str, Any]]


@contextlib.asynccontextmanager
async def serving(lab: Lab, answer: Answer | None) -> AsyncIterator[list[Request]]:
    """A stand-in for the running regcache: takes each request, answers it (None: never)."""
    taken: list[Request] = []

    async def serve() -> None:
        while True:
            request = await lab.index.next_request()
            if request is None:
                await asyncio.sleep(0.02)
                continue
            taken.append(request)
            if answer is not None:
                await lab.index.finish_request(request.id, json.dumps(answer(request)))

    task = asyncio.create_task(serve())
    try:
        yield taken
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def diff(request: Request) -> dict[str, Any]:
    tag = {"tag": "3.20", "serving": "sha256:" + "1" * 64, "upstream": "sha256:" + "2" * 64,
           "change": "move", "moved": request.action == "sync", "error": None}  # fmt: skip
    return {"entries": [{"entry": e, "error": None, "waiting": None, "tags": [tag]}
                        for e in request.entries]}  # fmt: skip


async def test_diff_asks_the_running_regcache_and_prints_its_answer(lab: Lab) -> None:
    async with serving(lab, diff) as taken:
        answer = await lab.json("diff", "docker.io/library/alpine:3.20", "ghcr.io/org/app")
        table = await lab.cli("diff", "alpine:3.20")
    assert [(r.action, r.entries) for r in taken] == [
        ("diff", ("alpine:3.20", "ghcr.io/org/app")),
        ("diff", ("alpine:3.20",)),
    ]
    assert answer == diff(taken[0])
    assert table.code == 0
    assert table.out.splitlines()[1].split() == [
        "alpine:3.20", "3.20", "sha256:111111111111", "sha256:222222222222", "move",
    ]  # fmt: skip


async def test_sync_reports_moves_and_exits_1_on_any_error(lab: Lab) -> None:
    def answer(request: Request) -> dict[str, Any]:
        result = diff(request)
        result["entries"].append(
            {"entry": "quay.io/org/tool:1.0", "error": "upstream answered 500", "waiting": None,
             "tags": []}
        )  # fmt: skip
        return result

    async with serving(lab, answer) as taken:
        ran = await lab.cli("sync")
    assert [(r.action, r.entries) for r in taken] == [("sync", ())]  # () is every entry
    assert ran.code == 1
    lines = ran.out.splitlines()
    assert "upstream answered 500" in lines[-1] and lines[-1].split()[4] == "error"


async def test_sync_no_wait_returns_once_the_request_is_taken(lab: Lab) -> None:
    async with serving(lab, None) as taken:
        ran = await lab.json("sync", "--no-wait", "quay.io/org/tool:1.0")
    assert ran == {"request": taken[0].id, "started": True}


async def test_an_unknown_entry_is_a_usage_error_listing_the_entries(lab: Lab) -> None:
    ran = await lab.cli("sync", "alpine:edge")
    assert ran.code == 2
    assert ran.err.strip() == (
        "regcache: 'alpine:edge' is not a mirror entry; the entries are: alpine:3.20,"
        " ghcr.io/org/app, quay.io/org/tool:1.0"
    )
    assert _requests(lab) == []


async def test_with_no_running_regcache_the_request_is_withdrawn_after_the_wait(
    lab: Lab,
) -> None:
    started = time.monotonic()
    ran = await lab.cli("diff", "--start-timeout", "0.3")
    assert ran.code == 1 and time.monotonic() - started >= 0.3
    assert ran.err.strip() == (
        "regcache: no running regcache took the request within 0.3 s"
        " (is it running with this config?)"
    )
    assert _requests(lab) == []  # a regcache started later does not act on it


async def test_a_sync_not_finished_in_time_exits_1(lab: Lab) -> None:
    async with serving(lab, None):
        ran = await lab.cli("sync", "--timeout", "0.3")
    assert ran.code == 1 and "did not finish within 0.3 s" in ran.err


def test_without_a_store_the_command_says_so(tmp_path: Path) -> None:
    rc = write_config(tmp_path, mirror=MIRROR)
    assert cli.main(["--config", str(rc.config_path), "mirror", "status"]) == 1


def _main(argv: list[str]) -> int:
    try:
        return cli.main(argv)
    except SystemExit as e:  # argparse refusing the command line
        return int(e.code or 0)


def _requests(lab: Lab) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(lab.store.root / INDEX_NAME)) as db:
        return list(db.execute("SELECT * FROM mirror_requests"))


async def test_rm_forgets_an_added_entry_and_leaves_its_content_to_eviction(lab: Lab) -> None:
    [digest] = await lab.images(1)
    await cached(lab, "ghcr.io", "org/extra", "v1", digest)
    await lab.cli("add", "--from-cache", "ghcr.io/org/extra:v1")
    assert str(digest) in await lab.index.pinned_digests()
    generation = await lab.index.mirror_generation()
    ran = await lab.cli("rm", "ghcr.io/org/extra:v1")
    assert ran.code == 0 and "1 tags and backup refs forgotten" in ran.out
    assert await lab.index.added_entries() == [] and await lab.index.mirrored_tags() == []
    assert str(digest) not in await lab.index.pinned_digests()  # eviction may take it now
    assert await lab.index.mirror_generation() > generation  # a running regcache reloads
    history = await lab.index.mirror_history(Place("ghcr.io", "org/extra", "v1"))
    assert [m.reason for m in history] == ["add"]  # kept
    again = await lab.cli("rm", "ghcr.io/org/extra:v1")
    assert again.code == 2 and "keeps nothing for it" in again.err


async def test_rm_refuses_an_entry_the_config_still_lists(lab: Lab) -> None:
    a, b = await lab.images(2)
    await lab.mirrored(ALPINE, "alpine:3.20", (a, JAN), (b, FEB))
    ran = await lab.cli("rm", "docker.io/library/alpine:3.20")
    assert ran.code == 2 and "remove it there first" in ran.err
    assert len(await lab.index.mirrored_tags()) == 2  # the tag and its backup
