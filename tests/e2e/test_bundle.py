"""`regcache export` and `regcache import` between two gateways (issue #18): images pulled
through gateway A are exported as an OCI image layout, gateway B (offline, every upstream
stopped) imports it while serving and its build hosts pull them by their usual names
through DNS; a delta needs its base; a damaged bundle changes nothing; skopeo, ctr and
podman take the bundles; memory stays flat on a multi-GiB bundle."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import _missing
from tests.e2e.images import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, Image, image, index, layer
from tests.e2e.lab import ADMIN_PORT, REGCACHE_IP, Lab, lab
from tests.e2e.test_ctr import _missing_ctr, running_containerd
from tests.e2e.test_mirror import podman_pull
from tests.harness import REPO

KiB, MiB = 1 << 10, 1 << 20
BIG_LAYERS = 2
BIG_LAYER = 1 << 30  # two 1 GiB layers: a 2 GiB bundle
REGCACHE = str(REPO / ".venv" / "bin" / "regcache")


@dataclass
class Made:
    """What gateway A exported, and what its images are."""

    folder: Path
    images: dict[str, Image] = field(default_factory=dict)
    """By reference (`ghcr.io/org/multi:m1`)."""
    big: str = ""
    """The big image's manifest digest."""
    figures: dict[str, Any] = field(default_factory=dict)


def cli(the_lab: Lab, *args: str, stdin: Any = None) -> subprocess.CompletedProcess[str]:
    assert the_lab.config_path is not None
    return subprocess.run([REGCACHE, *args, "--config", str(the_lab.config_path)],
                          capture_output=True, text=True, timeout=900, check=False,
                          stdin=stdin)  # fmt: skip


def measured(the_lab: Lab, *args: str) -> tuple[float, int, str]:
    """(seconds, peak RSS in KiB, stderr) of one `regcache` command. The peak is its
    VmHWM, read while it runs (rusage's maxrss would count the RSS of this pytest
    process, which the child is forked from, before its exec)."""
    assert the_lab.config_path is not None
    started = time.monotonic()
    err = the_lab.tmp / "measured.err"
    with err.open("wb") as out:
        proc = subprocess.Popen([REGCACHE, *args, "--config", str(the_lab.config_path)],
                                stdout=subprocess.DEVNULL, stderr=out)  # fmt: skip
        peak = 0
        while proc.poll() is None:
            with contextlib.suppress(OSError, ValueError, IndexError):  # exiting: no VmHWM
                status = Path(f"/proc/{proc.pid}/status").read_text()
                peak = max(peak, int(status.split("VmHWM:")[1].split()[0]))
            time.sleep(0.02)
    seconds = time.monotonic() - started
    assert proc.returncode == 0, err.read_text()
    return seconds, peak, err.read_text()


def big_layout(folder: Path, tag: str) -> str:
    """An OCI layout of BIG_LAYERS random blobs of BIG_LAYER bytes, written in pieces
    (the test holds none of it in memory); its manifest digest."""
    blobs = folder / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    layers = []
    for _ in range(BIG_LAYERS):
        hasher, temp = hashlib.sha256(), blobs / "partial"
        with temp.open("wb") as out:
            for _ in range(BIG_LAYER // (16 * MiB)):
                piece = os.urandom(16 * MiB)
                hasher.update(piece)
                out.write(piece)
        temp.rename(blobs / hasher.hexdigest())
        layers.append({"mediaType": OCI_LAYER, "digest": f"sha256:{hasher.hexdigest()}",
                       "size": BIG_LAYER})  # fmt: skip
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {
        "type": "layers", "diff_ids": [d["digest"] for d in layers]}}).encode()  # fmt: skip
    (blobs / hashlib.sha256(config).hexdigest()).write_bytes(config)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": {
        "mediaType": OCI_CONFIG, "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
        "size": len(config)}, "layers": layers}).encode()  # fmt: skip
    digest = hashlib.sha256(manifest).hexdigest()
    (blobs / digest).write_bytes(manifest)
    (folder / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    top = {"mediaType": OCI_MANIFEST, "digest": f"sha256:{digest}", "size": len(manifest),
           "annotations": {"org.opencontainers.image.ref.name": tag}}  # fmt: skip
    (folder / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))
    return f"sha256:{digest}"


def pulled(the_lab: Lab, ref: str, name: str) -> str:
    out, dest = the_lab.pull(ref, name)
    assert out.returncode == 0, out.stderr
    digest: str = json.loads((dest / "index.json").read_text())["manifests"][0]["digest"]
    shutil.rmtree(dest, ignore_errors=True)
    return digest


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Made]:
    """Gateway A: images published upstream, pulled through it, exported; then A goes."""
    reason = _missing()
    if reason:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("bundle-a")
    result = Made(tmp_path_factory.mktemp("bundles"))
    with lab(tmp) as a:
        shared = layer(300 * KiB, "shared-base")
        result.images = {
            "ghcr.io/org/multi:m1": index({"amd64": image([shared, layer(200 * KiB, "m-amd")]),
                                           "arm64": image([layer(150 * KiB, "m-arm")], "arm64")}),
            "ghcr.io/org/single:s1": image([shared, layer(100 * KiB, "single")]),
            "ghcr.io/org/next:n1": image([shared, layer(120 * KiB, "next")]),
        }  # fmt: skip
        for ref, img in result.images.items():
            repository, tag = ref.removeprefix("ghcr.io/").split(":")
            a.push_upstream("ghcr.io", repository, tag, img)
            assert pulled(a, ref, tag) == img.top.digest  # now in A's store
        out = result.folder
        for args in (
            ("ghcr.io/org/multi:m1", "ghcr.io/org/single:s1", "--out", str(out / "base.tar")),
            ("ghcr.io/org/single:s1", "--out", str(out / "single.tar")),
            ("ghcr.io/org/next:n1", "--base", str(out / "base.tar"), "--out",
             str(out / "delta.tar")),
        ):  # fmt: skip
            done = cli(a, "export", *args)
            assert done.returncode == 0, done.stderr
        _big(a, result)
    shutil.rmtree(tmp, ignore_errors=True)  # A's store and upstream: GiBs of disk back
    try:
        yield result
    finally:
        shutil.rmtree(result.folder, ignore_errors=True)


def _big(a: Lab, result: Made) -> None:
    """A 2 GiB image through A, then exported: peak RSS and MB/s, beside skopeo copying
    the same image (warm, from A's store) to an OCI layout."""
    source = a.tmp / "big-src"
    result.big = big_layout(source, "g1")
    # Pushed through A (its write-through keeps it), then pulled: A serves it warm.
    out = a.skopeo("copy", "--preserve-digests", "--dest-cert-dir", str(a.ca_dir),
                   f"oci:{source}:g1", "docker://ghcr.io/org/big:g1")  # fmt: skip
    shutil.rmtree(source, ignore_errors=True)
    assert out.returncode == 0, out.stderr
    assert pulled(a, "ghcr.io/org/big:g1", "big-cold") == result.big
    size = BIG_LAYERS * BIG_LAYER
    started = time.monotonic()
    assert pulled(a, "ghcr.io/org/big:g1", "big-warm") == result.big
    skopeo_s = time.monotonic() - started
    seconds, rss, _ = measured(a, "export", "ghcr.io/org/big:g1", "--out",
                               str(result.folder / "big.tar"))  # fmt: skip
    result.figures.update({
        "bytes": size, "export_s": round(seconds, 2), "export_peak_rss_kib": rss,
        "export_mb_s": round(size / seconds / 1e6, 1),
        "skopeo_copy_to_oci_s": round(skopeo_s, 2),
        "skopeo_copy_to_oci_mb_s": round(size / skopeo_s / 1e6, 1),
    })  # fmt: skip


def _offline(config: dict[str, Any]) -> None:
    config["offline"] = True


@pytest.fixture(scope="module")
def gateway_b(made: Made, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A fresh gateway with no upstream at all: offline, every registry stopped."""
    tmp = tmp_path_factory.mktemp("bundle-b")
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(shutil.rmtree, tmp, ignore_errors=True)  # after the lab stops
        b = cleanup.enter_context(lab(tmp, _offline))
        b.stop_upstream()
        yield b


def _store_files(the_lab: Lab) -> set[str]:
    return {p.name for p in (the_lab.state_dir / "blobs").rglob("*") if p.is_file()}


def test_a_delta_without_its_base_is_refused_and_nothing_changes(
    made: Made, gateway_b: Lab
) -> None:
    before = _store_files(gateway_b)
    out = cli(gateway_b, "import", str(made.folder / "delta.tar"))
    assert out.returncode == 2, out.stdout + out.stderr
    assert "import the base bundle first" in out.stderr, out.stderr
    assert _store_files(gateway_b) == before


def test_a_damaged_blob_is_refused_by_its_digest_and_the_store_is_unchanged(
    made: Made, gateway_b: Lab
) -> None:
    damaged = gateway_b.tmp / "damaged"
    with tarfile.open(made.folder / "single.tar") as tar:
        tar.extractall(damaged, filter="data")
    victim = next(p for p in (damaged / "blobs" / "sha256").iterdir() if p.stat().st_size > 1000)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    before = _store_files(gateway_b)
    out = cli(gateway_b, "import", str(damaged))
    assert out.returncode == 2 and f"sha256:{victim.name}: its bytes hash to" in out.stderr
    assert _store_files(gateway_b) == before
    assert list((gateway_b.state_dir / "tmp").glob("fill-*")) == []


def test_an_offline_gateway_serves_imported_images_to_skopeo_and_podman_with_no_upstream(
    made: Made, gateway_b: Lab
) -> None:
    listed = cli(gateway_b, "export", "--list", str(made.folder / "base.tar"))
    assert listed.returncode == 0 and "ghcr.io/org/multi:m1" in listed.stdout, listed.stderr
    with (made.folder / "base.tar").open("rb") as piped:  # as `export … --out - | import -`
        out = cli(gateway_b, "import", "-", stdin=piped)
    assert out.returncode == 0, out.stderr
    for ref in ("ghcr.io/org/multi:m1", "ghcr.io/org/single:s1"):
        _served(gateway_b, ref, made.images[ref].top.digest)
    root = Path(tempfile.mkdtemp(prefix="rcbundle-"))
    try:
        if shutil.which("podman"):
            done = podman_pull(gateway_b, "ghcr.io/org/single:s1", root)
            assert done.returncode == 0, done.stderr
    finally:
        shutil.rmtree(root, ignore_errors=True)
    metrics = gateway_b.ns.run("curl", "-s", f"http://{REGCACHE_IP}:{ADMIN_PORT}/metrics").stdout
    asked = [line for line in metrics.splitlines()
             if line.startswith("regcache_upstream_requests_total{")]  # fmt: skip
    assert asked == [], asked  # not one request upstream
    history = cli(gateway_b, "mirror", "history", "ghcr.io/org/single:s1", "--json")
    assert json.loads(history.stdout)["moves"][-1]["reason"] == "import"


def _served(the_lab: Lab, ref: str, want: str) -> None:
    """`ref` pulled through DNS as `want` (the running regcache reloads within a second)."""
    deadline = time.monotonic() + 10
    while _pull_or_none(the_lab, ref) != want:
        assert time.monotonic() < deadline, f"{ref} is not served as {want} after the import"
        time.sleep(0.3)


def _pull_or_none(the_lab: Lab, ref: str) -> str | None:
    out, dest = the_lab.pull(ref, "b-" + ref.rsplit(":", 1)[1])
    if out.returncode != 0:
        return None
    digest: str = json.loads((dest / "index.json").read_text())["manifests"][0]["digest"]
    shutil.rmtree(dest, ignore_errors=True)
    return digest


def test_the_delta_after_its_base_holds_only_new_blobs_and_is_served(
    made: Made, gateway_b: Lab
) -> None:
    base = _blob_names(made.folder / "base.tar")
    delta = _blob_names(made.folder / "delta.tar")
    assert delta and not delta & base  # the shared layer is left out
    out = cli(gateway_b, "import", str(made.folder / "delta.tar"))
    assert out.returncode == 0, out.stderr
    _served(gateway_b, "ghcr.io/org/next:n1", made.images["ghcr.io/org/next:n1"].top.digest)


def _blob_names(bundle: Path) -> set[str]:
    with tarfile.open(bundle) as tar:
        return {m.name for m in tar.getmembers() if m.name.startswith("blobs/")}


def test_skopeo_ctr_and_podman_take_the_bundles(made: Made, gateway_b: Lab) -> None:
    dest = gateway_b.tmp / "from-archive"
    archive = f"oci-archive:{made.folder / 'base.tar'}:s1"
    out = gateway_b.skopeo("copy", "--preserve-digests", archive, f"oci:{dest}:x")
    assert out.returncode == 0, out.stderr
    copied = json.loads((dest / "index.json").read_text())["manifests"][0]["digest"]
    assert copied == made.images["ghcr.io/org/single:s1"].top.digest
    if shutil.which("podman"):
        root = Path(tempfile.mkdtemp(prefix="rcload-"))
        try:
            loaded = gateway_b.ns.run(
                "podman", "--root", str(root / "root"), "--runroot", str(root / "run"),
                "--storage-driver", "vfs", "load", "-i", str(made.folder / "single.tar"),
                check=False, timeout=300,
            )  # fmt: skip
            assert loaded.returncode == 0, loaded.stdout + loaded.stderr
        finally:
            shutil.rmtree(root, ignore_errors=True)
    if _missing_ctr() is None:
        with running_containerd(gateway_b) as daemon:
            done = daemon.ctr("images", "import", "--all-platforms", "--no-unpack",
                              str(made.folder / "base.tar"))  # fmt: skip
            assert done.returncode == 0, done.stdout + done.stderr
            names = daemon.ctr("images", "list", "--quiet").stdout.split()
            assert {"ghcr.io/org/multi:m1", "ghcr.io/org/single:s1"} <= set(names), names


def test_a_multi_gib_bundle_is_imported_with_flat_memory(made: Made, gateway_b: Lab) -> None:
    _, small_rss, _ = measured(gateway_b, "import", str(made.folder / "single.tar"))
    seconds, rss, _ = measured(gateway_b, "import", str(made.folder / "big.tar"))
    size = made.figures["bytes"]
    made.figures.update({
        "import_s": round(seconds, 2), "import_peak_rss_kib": rss,
        "import_mb_s": round(size / seconds / 1e6, 1), "small_import_peak_rss_kib": small_rss,
    })  # fmt: skip
    (REPO / "artifacts").mkdir(exist_ok=True)
    (REPO / "artifacts" / "bundle.json").write_text(json.dumps(made.figures, indent=1))
    _served(gateway_b, "ghcr.io/org/big:g1", made.big)
    # Flat: the 2 GiB import's peak is the small one's, give or take a few MiB.
    assert rss - small_rss < 32 * 1024, made.figures
    assert made.figures["export_peak_rss_kib"] < 256 * 1024, made.figures
