"""Blobs redirected to a CDN host; fills that outlive their client; corrupt upstream bytes."""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path

from tests.e2e.images import image, layer
from tests.e2e.lab import Lab

MiB = 1 << 20


def stored(lab: Lab, digest: str) -> Path:
    hex_ = digest.split(":")[1]
    return lab.state_dir / "blobs" / "sha256" / hex_[:2] / hex_


def committed(lab: Lab, digest: str) -> bool:
    return f"fill committed digest={digest}" in lab.regcache_log.read_text()


def wait_for(predicate: object, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_pull_through_a_cdn_redirect_works_and_caches(the_lab: Lab) -> None:
    img = image([layer(2 * MiB, "cdn")])
    the_lab.push_upstream("quay.io", "org/cdn", "v1", img)
    quay = the_lab.registries["quay.io"]
    out, _ = the_lab.pull("quay.io/org/cdn:v1", "cdn-cold")
    assert out.returncode == 0, out.stderr
    redirected = quay.count("GET", "blobs", status=307)
    assert redirected >= 2  # config and layer went through the CDN
    for blob in img.blobs:
        assert stored(the_lab, blob.digest).read_bytes() == blob.data
    out, _ = the_lab.pull("quay.io/org/cdn:v1", "cdn-warm")
    assert out.returncode == 0, out.stderr
    assert quay.count("GET", "blobs", status=307) == redirected


def test_fill_survives_the_client_that_started_it(the_lab: Lab) -> None:
    big = layer(24 * MiB, "slow")  # the CDN sends 16 MiB/s: the fill takes ~1.5 s
    the_lab.push_upstream("quay.io", "org/slow", "v1", image([big]))
    url = f"https://quay.io/v2/org/slow/blobs/{big.digest}"
    client = subprocess.Popen(
        the_lab.ns.argv("curl", "-sS", "--cacert", str(the_lab.ca_dir / "ca.crt"),
                        "--limit-rate", "1M", "-o", "/dev/null", url),
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert wait_for(
            lambda: "fill-" in " ".join(p.name for p in (the_lab.state_dir / "tmp").iterdir()), 10
        )
        time.sleep(0.3)
    finally:
        client.kill()
        client.wait(timeout=10)
    assert not committed(the_lab, big.digest)  # killed mid-transfer, for real
    assert wait_for(lambda: committed(the_lab, big.digest), 30)
    assert hashlib.sha256(stored(the_lab, big.digest).read_bytes()).hexdigest() == big.digest[7:]
    assert list((the_lab.state_dir / "tmp").iterdir()) == []


def test_wrong_bytes_from_upstream_are_never_stored(the_lab: Lab) -> None:
    bad = layer(MiB, "corrupt-me")
    the_lab.push_upstream("quay.io", "org/bad", "v1", image([bad]))
    assert the_lab.cdn_corrupt is not None
    the_lab.cdn_corrupt.write_text(bad.digest + "\n")
    try:
        out, _ = the_lab.pull("quay.io/org/bad:v1", "bad")
        assert out.returncode != 0  # the client saw an error, not a complete wrong blob
        assert not stored(the_lab, bad.digest).exists()
        assert f"fill failed digest={bad.digest}" in the_lab.regcache_log.read_text()
        assert list((the_lab.state_dir / "tmp").iterdir()) == []
    finally:
        the_lab.cdn_corrupt.write_text("")
    out, _ = the_lab.pull("quay.io/org/bad:v1", "bad-again")  # upstream fixed: cached now
    assert out.returncode == 0, out.stderr
    assert stored(the_lab, bad.digest).read_bytes() == bad.data


def curl(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    return lab.ns.run("curl", "-sS", "--cacert", str(lab.ca_dir / "ca.crt"), *args, timeout=60)


def test_a_range_asked_mid_fill_is_answered_once_the_fill_is_verified(the_lab: Lab) -> None:
    """Bytes 1000-1999 are on disk long before the digest is checked: they are sent only
    once it is (a 206 of unverified bytes could be wrong and would never be noticed)."""
    big = layer(32 * MiB, "ranged")  # 2 s at the CDN's 16 MiB/s: the range lands mid-fill
    the_lab.push_upstream("quay.io", "org/ranged", "v1", image([big]))
    url = f"https://quay.io/v2/org/ranged/blobs/{big.digest}"
    starter = subprocess.Popen(
        the_lab.ns.argv(
            "curl", "-sS", "--cacert", str(the_lab.ca_dir / "ca.crt"), "-o", "/dev/null", url
        )
    )
    try:
        assert wait_for(lambda: (the_lab.state_dir / "tmp").exists()
                        and any((the_lab.state_dir / "tmp").iterdir()), 10)  # fmt: skip
        head, body = the_lab.tmp / "range.head", the_lab.tmp / "range.body"
        out = curl(the_lab, "-D", str(head), "-o", str(body), "-r", "1000-1999", url)
        assert out.returncode == 0, out.stderr
        assert committed(the_lab, big.digest)  # answered once the fill was verified, stored
    finally:
        starter.wait(timeout=60)
    headers = head.read_text().lower()
    assert headers.startswith("http/1.1 206")
    assert f"content-range: bytes 1000-1999/{len(big.data)}" in headers
    assert body.read_bytes() == big.data[1000:2000]


def test_blob_head_and_bad_digest_answers(the_lab: Lab) -> None:
    small = layer(1000, "head-me")
    the_lab.push("ghcr.io", "org/head", "v1", image([small]))
    the_lab.pull("ghcr.io/org/head:v1", "head")
    out = curl(the_lab, "-I", f"https://ghcr.io/v2/org/head/blobs/{small.digest}")
    headers = out.stdout.lower()
    assert "http/1.1 200" in headers and f"content-length: {len(small.data)}" in headers
    assert f"docker-content-digest: {small.digest}" in headers
    assert "docker-distribution-api-version: registry/2.0" in headers
    out = curl(the_lab, "-i", "https://ghcr.io/v2/org/head/blobs/sha256:nothex")
    assert "HTTP/1.1 400" in out.stdout and '"code": "DIGEST_INVALID"' in out.stdout


def test_upstream_with_an_untrusted_certificate_gets_502_and_nothing_cached(the_lab: Lab) -> None:
    before = sorted((the_lab.state_dir / "blobs").rglob("*"))
    digest = "sha256:" + "c" * 64
    out = curl(the_lab, "-i", f"https://mcr.microsoft.com/v2/dotnet/runtime/blobs/{digest}")
    assert "HTTP/1.1 502" in out.stdout, out.stdout
    assert '"code": "UNAVAILABLE"' in out.stdout and "certificate" in out.stdout
    assert sorted((the_lab.state_dir / "blobs").rglob("*")) == before


def test_a_first_request_with_a_range_still_fills_the_whole_blob(the_lab: Lab) -> None:
    blob = layer(300_000, "range-first")
    the_lab.push_upstream("ghcr.io", "org/rangefirst", "v1", image([blob]))
    body = the_lab.tmp / "range-first.body"
    out = curl(the_lab, "-o", str(body), "-r", "0-99",
               f"https://ghcr.io/v2/org/rangefirst/blobs/{blob.digest}")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert body.read_bytes() == blob.data[:100]
    assert wait_for(lambda: committed(the_lab, blob.digest), 10)
    upstream = [(m, st, size) for m, p, st, size in the_lab.registries["ghcr.io"].requests()
                if p.endswith(blob.digest) and m == "GET"]  # fmt: skip
    assert upstream == [("GET", 200, len(blob.data))]  # the Range was not passed upstream


def test_encoded_traversal_and_control_characters_never_reach_upstream(the_lab: Lab) -> None:
    ghcr = the_lab.registries["ghcr.io"]
    before = len(ghcr.requests())
    digest = "sha256:" + "d" * 64
    cases = {
        "/v2/org%2f..%2fprivate/app/manifests/v1": "NAME_INVALID",
        f"/v2/org/app/blobs/{digest}%2f..%2f..%2fprivate": "DIGEST_INVALID",
        "/v2/org/app/manifests/v1%2F..%2F..%2Fother": "MANIFEST_INVALID",
        "/v2/org/../private/app/manifests/v1": "NAME_INVALID",
        "/v2/org/app/manifests/latest%0A": "MANIFEST_INVALID",
        "/v2/org/app%00/tags/list": "NAME_INVALID",  # a pass-through path: refused the same
        "/v2/org%2Fapp/blobs/uploads/": "NAME_INVALID",
    }
    for path, code in cases.items():
        out = the_lab.ns.run("curl", "-sS", "-i", "--path-as-is", "--cacert",
                             str(the_lab.ca_dir / "ca.crt"), f"https://ghcr.io{path}")  # fmt: skip
        assert out.stdout.startswith("HTTP/1.1 400"), (path, out.stdout)
        assert f'"code": "{code}"' in out.stdout, (path, out.stdout)
    assert len(ghcr.requests()) == before  # none of them went upstream
    log = the_lab.regcache_log.read_text()
    assert "Traceback" not in log and "Error handling request" not in log
    assert log.count("request refused host=ghcr.io") == 1  # one throttled line, not seven
