"""Multi-arch fidelity: a build host pulls one platform of an index; the index is kept
byte-exact and every child manifest with it (fetched in the background), so a pull by
the index's digest works warm with no upstream GET, and keeps working, with every
platform's manifest fetchable by digest, while upstream is down."""

from __future__ import annotations

import subprocess
import time

from tests.e2e.images import image, index, layer
from tests.e2e.lab import Lab

REGISTRY, REPOSITORY = "ghcr.io", "multi/app"


def _copy(lab: Lab, ref: str, arch: str, name: str) -> subprocess.CompletedProcess[str]:
    """skopeo as a build host pulling one platform (no --all), through regcache."""
    argv = lab.ns.argv("skopeo", "--insecure-policy", "--override-arch", arch, "--override-os",
                       "linux", "copy", "--src-cert-dir", str(lab.ca_dir), f"docker://{ref}",
                       f"oci:{lab.tmp / name}:x")  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)


def _raw(lab: Lab, path: str) -> tuple[str, bytes]:
    out = lab.ns.run("curl", "-sS", "-w", "\n%{http_code}", "--cacert",
                     str(lab.ca_dir / "ca.crt"), "-H",
                     "Accept: application/vnd.oci.image.index.v1+json, "
                     "application/vnd.oci.image.manifest.v1+json",
                     f"https://{REGISTRY}/v2/{REPOSITORY}{path}", check=False)  # fmt: skip
    body, _, status = out.stdout.rpartition("\n")
    return status, body.encode()


def _manifest_gets(lab: Lab, digest: str) -> int:
    return sum(1 for m, path, st, _ in lab.registries[REGISTRY].requests()
               if m == "GET" and path.endswith(f"/manifests/{digest}") and st == 200)  # fmt: skip


def _content_gets(lab: Lab) -> list[tuple[str, str, int, int]]:
    """Manifest and blob GETs upstream got."""
    requests = lab.registries[REGISTRY].requests()
    return [r for r in requests if r[0] == "GET" and ("/manifests/" in r[1] or "/blobs/" in r[1])]


def test_one_platform_pulled_then_the_index_by_digest_warm_and_in_an_outage(
    the_lab: Lab,
) -> None:
    amd64 = image([layer(200_000, "ma-amd64")], "amd64")
    arm64 = image([layer(200_000, "ma-arm64")], "arm64")
    multi = index({"amd64": amd64, "arm64": arm64})
    the_lab.push_upstream(REGISTRY, REPOSITORY, "v1", multi)

    out = _copy(the_lab, f"{REGISTRY}/{REPOSITORY}:v1", "arm64", "one")
    assert out.returncode == 0, out.stderr
    deadline = time.monotonic() + 30  # the other platform's manifest, in the background
    while _manifest_gets(the_lab, amd64.top.digest) == 0:
        assert time.monotonic() < deadline, "the amd64 manifest was never fetched"
        time.sleep(0.2)
    assert _manifest_gets(the_lab, amd64.top.digest) == 1
    assert not any(m == "GET" and f"/blobs/{b.digest}" in path  # blobs: for pulls needing them
                   for m, path, _, _ in the_lab.registries[REGISTRY].requests()
                   for b in amd64.blobs)  # fmt: skip

    gets = len(_content_gets(the_lab))
    by_digest = f"{REGISTRY}/{REPOSITORY}@{multi.top.digest}"
    out = _copy(the_lab, by_digest, "arm64", "warm")
    assert out.returncode == 0, out.stderr
    assert _content_gets(the_lab)[gets:] == []  # the ping aside (kept per serving loop)

    the_lab.stop_upstream()
    assert _raw(the_lab, f"/manifests/{multi.top.digest}") == ("200", multi.top.data)
    for platform in (amd64, arm64):  # every child, by digest
        assert _raw(the_lab, f"/manifests/{platform.top.digest}") == ("200", platform.top.data)
    out = _copy(the_lab, by_digest, "arm64", "outage")
    assert out.returncode == 0, out.stderr
