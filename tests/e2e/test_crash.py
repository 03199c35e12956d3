"""Crash safety: regcache is killed with SIGKILL while 20 cold pulls stream through it,
restarted, and the store's invariants are checked, several times over. Then `regcache
cache` works on that store while the service runs.

Set REGCACHE_CRASH_ITERATIONS for a longer run (default 3).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.e2e.images import Image, image, layer
from tests.e2e.lab import REPO, Lab
from tests.e2e.test_pull import pulled_blobs

MiB = 1 << 20
PULLS = 20
ITERATIONS = int(os.environ.get("REGCACHE_CRASH_ITERATIONS", "3"))
HOST = "quay.io"  # blobs come from its CDN at 16 MiB/s per connection: kills land mid-body


def store_violations(state: Path, *, reconciled: bool) -> list[str]:
    """Every broken invariant of the store at `state`."""
    problems: list[str] = []
    with contextlib.closing(sqlite3.connect(f"file:{state}/index.sqlite?mode=ro", uri=True)) as db:
        check = db.execute("PRAGMA integrity_check").fetchall()
        if check != [("ok",)]:
            problems.append(f"integrity_check: {check}")
        for digest, size in db.execute("SELECT digest, size FROM blobs"):
            algorithm, hex_ = digest.split(":")
            path = state / "blobs" / algorithm / hex_[:2] / hex_
            if not path.exists():
                problems.append(f"row without file: {digest}")
            elif path.stat().st_size != size:
                problems.append(f"row {digest} says {size} bytes, file has {path.stat().st_size}")
    for path in (state / "blobs").rglob("*"):
        if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() != path.name:
            problems.append(f"file does not hash to its name: {path}")
    if reconciled:
        problems += [f"temp file survived: {p}" for p in (state / "tmp").glob("fill-*")]
    return problems


def regcache_cli(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    assert lab.config_path is not None
    argv = [
        str(REPO / ".venv" / "bin" / "regcache"),
        "cache",
        *args,
        "--config",
        str(lab.config_path),
    ]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def images(the_lab: Lab) -> dict[str, Image]:
    pushed = {}
    for i in range(PULLS):
        img = image([layer(6 * MiB, f"crash-{i}")])
        the_lab.push_upstream(HOST, f"crash/app{i}", "v1", img)  # cold: not written through
        pushed[f"{HOST}/crash/app{i}:v1"] = img
    return pushed


def test_kill_9_mid_transfer_never_breaks_the_store(the_lab: Lab, images: dict[str, Image]) -> None:
    state = the_lab.state_dir
    killed_with_fills = 0
    for iteration in range(ITERATIONS):
        pulls = [
            subprocess.Popen(the_lab.pull_argv(ref, the_lab.tmp / f"crash-{iteration}-{n}"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for n, ref in enumerate(images)
        ]  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while len(list((state / "tmp").glob("fill-*"))) < 5 and time.monotonic() < deadline:
                time.sleep(0.02)
            in_flight = len(list((state / "tmp").glob("fill-*")))
            assert the_lab.regcache_proc is not None
            the_lab.regcache_proc.kill()
            the_lab.regcache_proc.wait(timeout=10)
        finally:
            for proc in pulls:
                proc.wait(timeout=120)
        killed_with_fills += in_flight >= 5
        # Before any repair: rows only ever name complete, verified files.
        assert store_violations(state, reconciled=False) == [], f"iteration {iteration}"
        the_lab.start_regcache()
        assert store_violations(state, reconciled=True) == [], f"iteration {iteration}"
        # Everything cold again for the next round, through the CLI while serving.
        out = regcache_cli(the_lab, "rm", "--registry", HOST)
        assert out.returncode in (0, 2), out.stderr  # 2: nothing of quay.io stored yet
        assert store_violations(state, reconciled=True) == []
    assert killed_with_fills == ITERATIONS  # each kill landed with fills in flight
    assert "store reconciled" in the_lab.regcache_log.read_text()
    # The same pulls now complete, byte for byte.
    for n, (ref, img) in enumerate(images.items()):
        out, dest = the_lab.pull(ref, f"crash-final-{n}")
        assert out.returncode == 0, out.stderr
        assert pulled_blobs(dest) == {b.digest: b.data for b in (img.top, *img.blobs)}
    assert store_violations(state, reconciled=True) == []


def test_cache_commands_work_while_serving(the_lab: Lab, images: dict[str, Image]) -> None:
    refs = list(images)[:3]
    for n, ref in enumerate(refs):
        out, _ = the_lab.pull(ref, f"cli-{n}")
        assert out.returncode == 0, out.stderr
    out = regcache_cli(the_lab, "ls", "--registry", HOST, "--json")
    assert out.returncode == 0, out.stderr
    listed = {(i["repository"], tuple(i["tags"])): i for i in json.loads(out.stdout)}
    first = images[refs[0]]
    row = listed[("crash/app0", ("v1",))]
    assert row["digest"] == first.top.digest and row["registry"] == HOST
    assert row["size"] == sum(len(b.data) for b in (first.top, *first.blobs))
    table = regcache_cli(the_lab, "ls", "--repository", "crash/app0")
    assert table.returncode == 0 and "crash/app0" in table.stdout and "REGISTRY" in table.stdout

    out, _ = the_lab.pull(refs[0], "cli-warm")  # a warm pull: served from the store
    assert out.returncode == 0, out.stderr
    deadline = time.monotonic() + 15  # served bytes are written in batches every 5 s
    usage: dict[str, object] = {}
    while time.monotonic() < deadline:
        usage = json.loads(regcache_cli(the_lab, "du", "--json").stdout)
        quay = [r for r in usage["registries"] if r["registry"] == HOST]  # type: ignore[union-attr, index]
        if quay and quay[0]["served_from_store"] >= len(first.layers[0].data):
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"du never showed the warm pull's bytes: {usage}")

    pin = regcache_cli(the_lab, "pin", f"{HOST}/crash/app0:v1")
    assert pin.returncode == 0, pin.stderr
    refused = regcache_cli(the_lab, "rm", f"{HOST}/crash/app0:v1")
    assert refused.returncode == 2 and "pinned" in refused.stderr
    layer_digest = first.layers[0].digest
    refused = regcache_cli(the_lab, "rm", layer_digest)
    assert refused.returncode == 2 and "referenced by" in refused.stderr
    assert regcache_cli(the_lab, "unpin", f"{HOST}/crash/app0:v1").returncode == 0
    removed = regcache_cli(the_lab, "rm", f"{HOST}/crash/app0:v1", "--json")
    assert removed.returncode == 0, removed.stderr
    assert json.loads(removed.stdout)["rows"] == 3  # manifest, config, layer
    algorithm, hex_ = layer_digest.split(":")
    assert not (the_lab.state_dir / "blobs" / algorithm / hex_[:2] / hex_).exists()
    out, dest = the_lab.pull(refs[0], "cli-after-rm")  # fetched again, served right
    assert out.returncode == 0, out.stderr
    assert pulled_blobs(dest)[layer_digest] == first.layers[0].data

    second = images[refs[1]].layers[0].digest
    algorithm, hex_ = second.split(":")
    path = the_lab.state_dir / "blobs" / algorithm / hex_[:2] / hex_
    path.write_bytes(b"X" + path.read_bytes()[1:])  # bit rot
    verify = regcache_cli(the_lab, "verify", "--json")
    assert verify.returncode == 1
    report = json.loads(verify.stdout)
    assert report["bad"] == [second] and "verified" in verify.stderr
    assert not path.exists() and list((the_lab.state_dir / "quarantine").glob(f"{hex_}.*"))
    out, dest = the_lab.pull(refs[1], "cli-after-verify")
    assert out.returncode == 0, out.stderr
    assert pulled_blobs(dest)[second] == images[refs[1]].layers[0].data
    gc = regcache_cli(the_lab, "gc", "--json")
    assert gc.returncode == 0, gc.stderr
    assert store_violations(the_lab.state_dir, reconciled=True) == []
