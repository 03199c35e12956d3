"""A full disk, for real: regcache's state directory is a small tmpfs this test mounts.
Pulls keep working (bytes streamed through, not kept), the store stays clean, eviction
makes room, and caching resumes once there is space again."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import _missing
from tests.e2e.images import image, layer
from tests.e2e.lab import ADMIN_PORT, REGCACHE_IP, Lab, lab, tmpfs
from tests.e2e.test_crash import store_violations
from tests.e2e.test_pull import pulled_blobs, stored

MiB = 1 << 20
TMPFS_BYTES = 40 * MiB


@pytest.fixture(scope="module")
def small_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("full")
    with tmpfs(tmp / "state", TMPFS_BYTES), lab(tmp) as running:
        yield running


def _free(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def test_a_full_disk_streams_through_evicts_and_recovers(small_lab: Lab) -> None:
    state = small_lab.state_dir
    old = image([layer(4 * MiB, "old")])
    small_lab.push("ghcr.io", "full/old", "v1", old)
    out, _ = small_lab.pull("ghcr.io/full/old:v1", "old")
    assert out.returncode == 0, out.stderr
    assert stored(small_lab, old.layers[0].digest).exists()

    filler = state / "filler"
    with filler.open("wb") as f:  # another tenant of the filesystem: 6 MiB stay free
        f.write(b"\0" * (_free(state) - 6 * MiB))
    big = image([layer(12 * MiB, "big")])
    small_lab.push("ghcr.io", "full/big", "v1", big)
    want = {b.digest: b.data for b in (big.top, *big.blobs)}
    for attempt in range(2):
        out, dest = small_lab.pull("ghcr.io/full/big:v1", f"big-{attempt}")
        assert out.returncode == 0, out.stderr
        assert pulled_blobs(dest) == want  # every byte, though nothing could be kept
        assert not stored(small_lab, big.layers[0].digest).exists()
        assert list((state / "tmp").glob("fill-*")) == []
    log = small_lab.regcache_log.read_text()
    assert log.count("store disk-full") == 1  # once per interval, however many fills hit it
    deadline = time.monotonic() + 30  # eviction ran first: the old image made room
    while stored(small_lab, old.layers[0].digest).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not stored(small_lab, old.layers[0].digest).exists()
    assert "store evicted reason=disk-full" in small_lab.regcache_log.read_text()
    metrics = small_lab.ns.run("curl", "-sf", f"http://{REGCACHE_IP}:{ADMIN_PORT}/metrics").stdout
    evicted = re.search(r"^regcache_evicted_bytes_total (\S+)$", metrics, re.MULTILINE)
    assert evicted is not None and float(evicted.group(1)) >= len(old.layers[0].data)
    assert store_violations(state, reconciled=True) == []

    filler.unlink()  # space comes back: the next pull is kept again
    out, dest = small_lab.pull("ghcr.io/full/big:v1", "big-after")
    assert out.returncode == 0, out.stderr
    assert pulled_blobs(dest) == want
    assert stored(small_lab, big.layers[0].digest).read_bytes() == big.layers[0].data
    assert store_violations(state, reconciled=True) == []
