"""containerd's own client, `ctr`, pushes through regcache the containerd way (a POST,
then one PUT carrying the whole blob): the image lands upstream byte-identical and another
client's pull right after is served from regcache's store."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import pytest

from tests.e2e.conftest import _missing
from tests.e2e.images import Image, image, layer, write_layout
from tests.e2e.lab import Lab, Registry, lab
from tests.e2e.test_pull import stored

KiB = 1 << 10
NAMESPACE = "test"
SOURCE = "local/ctr-src"
"""What `ctr images import --base-name` names the imported image (`SOURCE:<tag>`)."""
CONFIG = """version = 2
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"""
# Only the content store and image metadata are used; the opt plugin would otherwise
# create /opt/containerd (Debian's packaged config points it at /var/lib/containerd).


def _missing_ctr() -> str | None:
    for tool in ("containerd", "ctr"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (make test installs it when run as root)"
    return None


@dataclass(frozen=True, slots=True)
class Containerd:
    """A private containerd daemon in the lab's namespace, driven with `ctr`."""

    lab: Lab
    address: Path

    def ctr(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return self.lab.ns.run(
            "ctr", "--address", str(self.address), "--namespace", NAMESPACE, *args,
            timeout=timeout, check=False,
        )  # fmt: skip


@pytest.fixture(scope="module")
def clab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = _missing() or _missing_ctr()
    if reason:
        pytest.skip(reason)
    with lab(tmp_path_factory.mktemp("ctr")) as running:
        yield running


def _unmount_leftovers(root: Path) -> None:
    """Anything still mounted under the daemon's root (a push mounts nothing, but a
    daemon killed mid-way must not leave the next rmtree walking into a mount)."""
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    points = [line.split()[1] for line in mounts if line.split()[1].startswith(str(root))]
    for point in sorted(points, key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], check=False)


@contextlib.contextmanager
def running_containerd(the_lab: Lab) -> Iterator[Containerd]:
    """A private containerd in `the_lab`'s namespace, stopped and removed after."""
    home = the_lab.tmp / "containerd"
    root, state = home / "root", home / "state"
    state.mkdir(parents=True)
    config = home / "config.toml"
    config.write_text(CONFIG.format(opt=home / "opt"))
    # A socket path may hold 107 bytes; pytest's tmp paths can be longer than that.
    sockets = Path(tempfile.mkdtemp(prefix="rcctr-"))
    daemon = Containerd(the_lab, sockets / "containerd.sock")
    log = home / "containerd.log"
    proc = the_lab.ns.start(
        "containerd", "--config", str(config), "--root", str(root), "--state", str(state),
        "--address", str(daemon.address), log=log,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while daemon.ctr("version", timeout=10).returncode != 0:
            assert proc.poll() is None, f"containerd exited:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"containerd did not answer:\n{log.read_text()}"
            time.sleep(0.2)
        yield daemon
    finally:
        the_lab.ns.stop(proc)
        _unmount_leftovers(root)
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(sockets, ignore_errors=True)


@pytest.fixture
def containerd(clab: Lab) -> Iterator[Containerd]:
    with running_containerd(clab) as daemon:
        yield daemon


def _import(daemon: Containerd, img: Image, tag: str) -> None:
    """`img` into containerd's content store from an OCI archive, regcache not involved."""
    layout = write_layout(daemon.lab.tmp / "ctr-src", tag, img)
    archive = daemon.lab.tmp / "ctr-src.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(layout, arcname=".")
    out = daemon.ctr("images", "import", "--all-platforms", "--no-unpack", "--base-name", SOURCE,
                     str(archive))  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    listed = daemon.ctr("images", "list", "--quiet")
    assert f"{SOURCE}:{tag}" in listed.stdout.split(), listed.stdout + listed.stderr


def _upstream_holds(registry: Registry, repository: str, tag: str, img: Image) -> None:
    """The upstream registry's own storage has every blob, byte for byte, and the tag."""
    v2 = registry.folder / "data" / "docker" / "registry" / "v2"
    for blob in (img.top, *img.blobs):
        hex_ = blob.digest.removeprefix("sha256:")
        assert (v2 / "blobs" / "sha256" / hex_[:2] / hex_ / "data").read_bytes() == blob.data
    link = v2 / "repositories" / repository / "_manifests" / "tags" / tag / "current" / "link"
    assert link.read_text() == img.top.digest


def test_ctr_pushes_with_post_and_one_put_and_the_next_pull_comes_from_the_store(
    clab: Lab, containerd: Containerd
) -> None:
    img = image([layer(600 * KiB, "pushed-by-ctr"), layer(90 * KiB, "ctr-top")])
    _import(containerd, img, "v1")
    ghcr = clab.registries["ghcr.io"]
    before = len(ghcr.requests())
    out = containerd.ctr("images", "push", "--tlscacert", str(clab.ca_dir / "ca.crt"),
                         "ghcr.io/org/ctr-pushed:v1", f"{SOURCE}:v1")  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr

    sent = [(m, unquote(p), st) for m, p, st, _ in ghcr.requests()[before:]
            if "/org/ctr-pushed/" in p]  # fmt: skip
    uploads = [(m, p, st) for m, p, st in sent if "/blobs/uploads/" in p]
    assert [u for u in uploads if u[0] not in ("POST", "PUT")] == [], uploads  # no PATCH
    methods = sorted(m for m, _, _ in uploads)
    assert methods == ["POST"] * len(img.blobs) + ["PUT"] * len(img.blobs), uploads
    for blob in img.blobs:
        puts = [u for u in uploads if u[0] == "PUT" and f"digest={blob.digest}" in u[1]]
        assert [st for _, _, st in puts] == [201], (blob.digest, uploads)
    assert ("PUT", "/v2/org/ctr-pushed/manifests/v1", 201) in sent, sent
    _upstream_holds(ghcr, "org/ctr-pushed", "v1", img)
    for blob in img.blobs:  # written through: kept as it passed
        assert stored(clab, blob.digest).read_bytes() == blob.data

    after_push = len(ghcr.requests())
    pulled, dest = clab.pull("ghcr.io/org/ctr-pushed:v1", "ctr-pushed")
    assert pulled.returncode == 0, pulled.stderr
    index = (dest / "index.json").read_text()
    assert img.top.digest in index, index
    for blob in (img.top, *img.blobs):
        hex_ = blob.digest.removeprefix("sha256:")
        assert (dest / "blobs" / "sha256" / hex_).read_bytes() == blob.data
    blob_gets = [
        r for r in ghcr.requests()[after_push:]
        if r[0] == "GET" and any(f"/blobs/{b.digest}" in r[1] for b in img.blobs)
    ]  # fmt: skip
    assert blob_gets == [], blob_gets  # served from regcache's store
