"""Pushes through regcache by real clients, through the DNS interception: they land
upstream byte-identical; a push policy of `deny` stops them at once; a blob the store
holds from another repository is never reported present to a pushing client."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import _missing
from tests.e2e.images import OCI_MANIFEST, Image, image, layer, write_layout
from tests.e2e.lab import ALICE_PASSWORD, Lab, lab
from tests.e2e.test_pull import stored
from tests.harness import REPO

HUB = "registry-1.docker.io"
ALICE = f"alice:{ALICE_PASSWORD}"
KiB = 1 << 10


def _tweak(config: dict[str, Any]) -> None:
    ghcr = next(r for r in config["registries"] if r["name"] == "ghcr.io")
    ghcr["push"] = [{"repositories": ["frozen/*"], "policy": "deny"}]


@pytest.fixture(scope="module")
def plab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    with lab(tmp_path_factory.mktemp("push"), _tweak) as running:
        yield running


def upstream_digest(lab: Lab, ref: str, creds: str | None = None) -> str:
    """The manifest digest regcache serves for `ref` (pulled back through it)."""
    dest = lab.tmp / f"back-{ref.replace('/', '_').replace(':', '_')}"
    shutil.rmtree(dest, ignore_errors=True)
    argv = lab.pull_argv(ref, dest, creds)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    digest: str = json.loads((dest / "index.json").read_text())["manifests"][0]["digest"]
    return digest


def test_a_push_the_policy_denies_stops_at_once_and_reaches_no_upstream(plab: Lab) -> None:
    layout = write_layout(plab.tmp / "frozen", "v1", image([layer(50 * KiB, "frozen")]))
    ghcr = plab.registries["ghcr.io"]
    before = len(ghcr.requests())
    out = plab.skopeo("copy", "--dest-cert-dir", str(plab.ca_dir), f"oci:{layout}:v1",
                      "docker://ghcr.io/frozen/app:v1")  # fmt: skip
    assert out.returncode != 0
    assert "denied" in out.stderr and "registries[].push" in out.stderr, out.stderr
    seen = [r for r in ghcr.requests()[before:] if "/frozen/" in r[1]]
    # No write reached upstream. skopeo's first question, a HEAD of the layer, is a read
    # like any pull's and is answered as one (upstream: 404).
    assert [r for r in seen if r[0] not in ("GET", "HEAD")] == [], seen


def test_skopeo_and_podman_pushes_land_upstream_byte_identical(plab: Lab) -> None:
    img = image([layer(300 * KiB, "pushed-by-skopeo")])
    plab.push("ghcr.io", "org/pushed", "v1", img)  # skopeo copy --preserve-digests
    ghcr = plab.registries["ghcr.io"]
    gets = ghcr.count("GET", "blobs")
    # Written through: another client's pull right after is served from the store.
    assert upstream_digest(plab, "ghcr.io/org/pushed:v1") == img.top.digest
    assert ghcr.count("GET", "blobs") == gets

    if shutil.which("podman") is None:
        pytest.skip("podman is not installed")
    root = Path(tempfile.mkdtemp(prefix="rcpush-"))
    try:
        podman = ("podman", "--root", str(root / "root"), "--runroot", str(root / "run"),
                  "--storage-driver", "vfs")  # fmt: skip
        for args in (
            ("pull", "--quiet", "--cert-dir", str(plab.ca_dir), "docker://ghcr.io/org/pushed:v1"),
            ("push", "--cert-dir", str(plab.ca_dir), "ghcr.io/org/pushed:v1",
             "docker://ghcr.io/org/by-podman:v1"),
        ):  # fmt: skip
            out = plab.ns.run(*podman, *args, timeout=300, check=False)
            assert out.returncode == 0, out.stderr
    finally:
        shutil.rmtree(root, ignore_errors=True)
    upstream_digest(plab, "ghcr.io/org/by-podman:v1")  # it is there, served through regcache


def test_a_tag_pulled_while_missing_then_pushed_is_pulled_at_once(plab: Lab) -> None:
    """Within the negative cache's window (30 s by default): the 404 a pull met is
    forgotten when a push through regcache writes that repository."""
    ghcr = plab.registries["ghcr.io"]
    asked = []
    for attempt in range(2):
        out, _ = plab.pull("ghcr.io/org/late:v1", f"late-missing-{attempt}")
        assert out.returncode != 0 and "manifest unknown" in out.stderr.lower(), out.stderr
        asked.append([r for r in ghcr.requests() if r[1] == "/v2/org/late/manifests/v1"])
    assert asked[0] and asked[1] == asked[0]  # the second 404 came from regcache's memory
    img = image([layer(20 * KiB, "late")])
    plab.push("ghcr.io", "org/late", "v1", img)
    assert upstream_digest(plab, "ghcr.io/org/late:v1") == img.top.digest
    # Sign, then verify: cosign looks its signature up by a tag named after the digest.
    sig = f"sha256-{img.top.digest.removeprefix('sha256:')}.sig"
    url = f"https://ghcr.io/v2/org/late/manifests/{sig}"
    head = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-I", "--cacert",
            str(plab.ca_dir / "ca.crt"), "-H", f"Accept: {OCI_MANIFEST}", url]  # fmt: skip
    assert [plab.ns.run(*head).stdout for _ in range(2)] == ["404", "404"]
    plab.push("ghcr.io", "org/late", sig, image([layer(1 * KiB, "signature")]))
    assert plab.ns.run(*head).stdout == "200"


def test_a_blob_stored_from_another_repository_is_uploaded_not_skipped(plab: Lab) -> None:
    """The hazard only a cross-registry store has: the pushing client HEADs each blob and
    skips the upload on a 200. A layer regcache holds from a public repository must not
    look present in alice's private one, or upstream would refuse her manifest."""
    shared = layer(200 * KiB, "shared-with-a-private-push")
    plab.push(HUB, "library/public-base", "v1", image([shared]))
    out, _ = plab.pull(f"{HUB}/library/public-base:v1", "public-base")  # now in the store
    assert out.returncode == 0, out.stderr
    private = image([shared, layer(10 * KiB, "private-top")])
    plab.push(HUB, "private/built", "v1", private, creds=ALICE)
    audit = [json.loads(line) for line in (plab.state_dir / "audit.jsonl").read_text().splitlines()]
    asked = [a for a in audit if a.get("repository") == "private/built"
             and a.get("reference") == shared.digest and a.get("method") == "HEAD"]  # fmt: skip
    assert asked and all(a["status"] == 404 for a in asked)  # upstream's answer, not the store's
    assert upstream_digest(plab, f"{HUB}/private/built:v1", ALICE) == private.top.digest


def _curl_push(plab: Lab, repository: str, style: str, img: Image) -> None:
    """`img` pushed to ghcr.io through regcache the way a given client does it (curl
    sending exactly those requests): `containerd` (POST, then one PUT with the body),
    `docker` (POST, a PATCH of unknown length, chunked, then an empty PUT) or `mount`
    (each blob mounted from org/raw, where the containerd style put them)."""
    ca = plab.ca_dir / "ca.crt"
    base = f"https://ghcr.io/v2/{repository}"
    lines = ["set -eu", f"ca={ca}",
             "location() { tr -d '\\r' | sed -n 's/^[Ll]ocation: //p'; }"]  # fmt: skip
    octets = "-H 'Content-Type: application/octet-stream'"
    for n, blob in enumerate(img.blobs):
        path = plab.tmp / f"{style}-{n}.blob"
        path.write_bytes(blob.data)
        start = f"curl -sS -D - -o /dev/null --cacert $ca -X POST {base}/blobs/uploads/"
        if style == "mount":
            lines.append(f"{start}?mount={blob.digest}\\&from=org/raw | grep -q '^HTTP/1.1 201'")
            continue
        lines.append(f"loc=$({start} | location)")
        put = f'curl -sSf -o /dev/null --cacert $ca -X PUT {octets} "$loc&digest={blob.digest}"'
        if style == "docker":
            chunked = "-H 'Transfer-Encoding: chunked' --data-binary @-"
            lines.append(f"loc=$(curl -sS -D - -o /dev/null --cacert $ca -X PATCH {octets} "
                         f'{chunked} "$loc" < {path} | location)')  # fmt: skip
            lines.append(put)
        else:
            lines.append(put.replace("-X PUT", f"-X PUT --data-binary @{path}"))
    manifest = plab.tmp / f"{style}.manifest"
    manifest.write_bytes(img.top.data)
    lines.append(f"curl -sSf -o /dev/null --cacert $ca -X PUT --data-binary @{manifest} "
                 f"-H 'Content-Type: {img.top.media_type}' {base}/manifests/v1")  # fmt: skip
    out = plab.ns.run("sh", "-c", "\n".join(lines), timeout=120, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("style", ["containerd", "docker", "mount"])
def test_each_upload_style_lands_upstream_and_the_next_pull_comes_from_the_store(
    plab: Lab, style: str
) -> None:
    img = _RAW if style == "mount" else image([layer(700 * KiB, f"raw-{style}")])
    repository = "org/raw" if style == "containerd" else f"org/{style}"
    if style == "mount":
        _curl_push(plab, "org/raw", "containerd", img)  # what the mount takes from
    _curl_push(plab, repository, style, img)
    ghcr = plab.registries["ghcr.io"]
    gets = ghcr.count("GET", "blobs")
    assert upstream_digest(plab, f"ghcr.io/{repository}:v1") == img.top.digest
    # A mount sends no bytes: what it names was kept when org/raw was pushed.
    assert ghcr.count("GET", "blobs") == gets


_RAW = image([layer(300 * KiB, "raw-mounted")])


GiB = 1 << 30


def _peak_rss_kib(pid: int) -> int:
    """The process's peak resident set so far (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_a_multi_gib_push_streams_with_flat_memory_and_is_kept(plab: Lab) -> None:
    """2 GiB in one chunked PATCH (docker's way), random bytes hashed on the client side:
    regcache's peak RSS must not grow with the body (it streams and tees to disk)."""
    assert plab.regcache_proc is not None
    pid = plab.regcache_proc.pid  # `ip netns exec` execs regcache: the same process
    ca, base = plab.ca_dir / "ca.crt", "https://ghcr.io/v2/org/huge"
    size = 2 * GiB
    script = f"""set -eu
location() {{ tr -d '\\r' | sed -n 's/^[Ll]ocation: //p'; }}
loc=$(curl -sS -D - -o /dev/null --cacert {ca} -X POST {base}/blobs/uploads/ | location)
head -c {size} /dev/urandom | tee >(sha256sum | cut -d' ' -f1 > {plab.tmp}/huge.sum) |
  curl -sS -D {plab.tmp}/huge.headers -o /dev/null --cacert {ca} -X PATCH \\
    -H 'Content-Type: application/octet-stream' -T - "$loc"
sleep 1
loc=$(location < {plab.tmp}/huge.headers)
curl -sSf -o /dev/null --cacert {ca} -X PUT "$loc&digest=sha256:$(cat {plab.tmp}/huge.sum)"
"""
    before = _peak_rss_kib(pid)
    out = plab.ns.run("bash", "-c", script, timeout=600, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    after = _peak_rss_kib(pid)
    digest = "sha256:" + (plab.tmp / "huge.sum").read_text().strip()
    assert stored(plab, digest).stat().st_size == size  # kept, on disk
    grown = after - before
    (REPO / "artifacts").mkdir(exist_ok=True)
    (REPO / "artifacts" / "push-rss.json").write_text(json.dumps(
        {"bytes": size, "peak_rss_before_kib": before, "peak_rss_after_kib": after,
         "grown_kib": grown}))  # fmt: skip
    for copy in (
        stored(plab, digest),
        *(plab.registries["ghcr.io"].folder / "data").rglob(digest.removeprefix("sha256:")),
    ):  # 4 GiB of disk back (the lab ends after this)
        if copy.is_file():
            copy.unlink()
        elif (copy / "data").is_file():
            (copy / "data").unlink()
    assert grown < 64 << 10, f"peak RSS grew {grown} KiB over a {size}-byte push"
