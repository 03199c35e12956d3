"""Pulls by real clients through the DNS interception, against real upstream registries."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.images import Blob, image, index, layer
from tests.e2e.lab import Lab
from tests.harness import REPO

MiB = 1 << 20


def pulled_blobs(layout: Path) -> dict[str, bytes]:
    """digest → bytes of every blob in an OCI layout skopeo wrote, hashes checked."""
    out = {}
    for path in (layout / "blobs" / "sha256").iterdir():
        data = path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == path.name
        out[f"sha256:{path.name}"] = data
    return out


def stored(lab: Lab, digest: str) -> Path:
    algorithm, hex_ = digest.split(":")
    return lab.state_dir / "blobs" / algorithm / hex_[:2] / hex_


def test_cold_pull_is_byte_identical_and_warm_pull_gets_nothing_upstream(the_lab: Lab) -> None:
    shared = layer(MiB // 2, "shared")
    multi = index({"amd64": image([layer(2 * MiB), shared]), "arm64": image([layer(MiB), shared])})
    the_lab.push("registry-1.docker.io", "library/multi", "v1", multi)
    upstream = the_lab.registries["registry-1.docker.io"]
    ref = "registry-1.docker.io/library/multi:v1"

    out, cold = the_lab.pull(ref, "multi-cold")
    assert out.returncode == 0, out.stderr
    assert the_lab.inspect_raw(ref).encode() == multi.top.data  # the index, byte-exact
    want = {b.digest: b.data for b in (multi.top, *multi.blobs)}
    assert pulled_blobs(cold) == want  # every manifest, config and layer, both platforms
    for digest in want:
        assert stored(the_lab, digest).read_bytes() == want[digest]

    blob_gets, manifest_gets = upstream.count("GET", "blobs"), upstream.count("GET", "manifests")
    blob_bytes = upstream.blob_bytes_sent()
    out, warm = the_lab.pull(ref, "multi-warm")
    assert out.returncode == 0, out.stderr
    assert pulled_blobs(warm) == want
    assert upstream.count("GET", "blobs") == blob_gets
    assert upstream.blob_bytes_sent() == blob_bytes
    assert upstream.count("GET", "manifests") == manifest_gets  # only HEADs revalidate the tag


def test_layer_shared_by_two_registries_is_fetched_and_stored_once(the_lab: Lab) -> None:
    shared = layer(MiB, "shared-across")
    the_lab.push("registry-1.docker.io", "library/one", "v1", image([shared, layer(1000)]))
    the_lab.push("ghcr.io", "org/two", "v1", image([shared, layer(2000)]))
    for ref, name in (
        ("registry-1.docker.io/library/one:v1", "one"),
        ("ghcr.io/org/two:v1", "two"),
    ):
        out, _ = the_lab.pull(ref, name)
        assert out.returncode == 0, out.stderr
    ghcr = the_lab.registries["ghcr.io"]
    fetched = [p for m, p, st, _ in ghcr.requests() if m == "GET" and shared.digest in p]
    assert fetched == []  # ghcr.io's copy was never needed: the store already had it
    assert stored(the_lab, shared.digest).read_bytes() == shared.data


def test_concurrent_cold_pulls_fetch_each_blob_once(the_lab: Lab) -> None:
    img = image([layer(8 * MiB, "big"), layer(3 * MiB, "small")])
    the_lab.push_upstream("registry-1.docker.io", "library/crowd", "v1", img)
    upstream = the_lab.registries["registry-1.docker.io"]
    before = {b.digest: _gets(upstream.requests(), b) for b in img.blobs}
    ref = "registry-1.docker.io/library/crowd:v1"
    pulls = [
        subprocess.Popen(
            the_lab.pull_argv(ref, the_lab.tmp / f"crowd-{i}"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for i in range(8)
    ]
    for proc in pulls:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    for blob in img.blobs:
        assert _gets(upstream.requests(), blob) - before[blob.digest] == 1, blob.digest
    for i in range(8):
        assert pulled_blobs(the_lab.tmp / f"crowd-{i}").keys() >= {b.digest for b in img.blobs}


def _gets(requests: list[tuple[str, str, int, int]], blob: Blob) -> int:
    return sum(1 for m, p, st, _ in requests if m == "GET" and p.endswith(blob.digest))


def test_tag_moves_are_seen_at_once(the_lab: Lab) -> None:
    """Tags are revalidated on every request (tag_ttl 0): a re-pushed tag is served new."""
    first, second = image([layer(1000, "a")]), image([layer(1000, "b")])
    ref = "registry-1.docker.io/library/moving:latest"
    the_lab.push("registry-1.docker.io", "library/moving", "latest", first)
    assert json.loads(the_lab.inspect_raw(ref)) == json.loads(first.top.data)
    the_lab.push("registry-1.docker.io", "library/moving", "latest", second)
    assert the_lab.inspect_raw(ref).encode() == second.top.data


def test_bearer_auth_flows_through_unchanged(the_lab: Lab) -> None:
    """Docker Hub's lab twin wants tokens: clients got the challenge and fetched tokens
    from the realm through regcache's pass-through; regcache fetched none itself."""
    assert the_lab.token_log is not None
    scopes = [json.loads(line)["scopes"] for line in the_lab.token_log.read_text().splitlines()]
    assert ["repository:library/multi:pull"] in scopes
    hub = the_lab.registries["registry-1.docker.io"]
    assert any(st == 401 for _, _, st, _ in hub.requests())  # the challenge reached clients
    assert all(st != 401 for m, p, st, _ in hub.requests() if "/blobs/sha256:" in p and m == "GET")


def test_podman_pull_through_the_interception(the_lab: Lab) -> None:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed on this machine")
    img = image([layer(MiB, "podman")])
    the_lab.push("registry-1.docker.io", "library/pod", "v1", img)
    storage = the_lab.tmp / "podman"
    out = the_lab.ns.run(
        "podman", "--root", str(storage / "root"), "--runroot", str(storage / "run"),
        "--storage-driver", "vfs", "pull", "--cert-dir", str(the_lab.ca_dir),
        "registry-1.docker.io/library/pod:v1", check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    config = next(b for b in img.blobs if b.media_type.endswith("config.v1+json"))
    assert out.stdout.strip() == config.digest.removeprefix("sha256:")  # podman's image ID
    for blob in img.blobs:
        assert stored(the_lab, blob.digest).read_bytes() == blob.data


def _many_pulls(the_lab: Lab, ref: str, count: int, name: str) -> None:
    for first in range(0, count, 5):
        procs = [
            subprocess.Popen(the_lab.pull_argv(ref, the_lab.tmp / f"{name}-{i}"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for i in range(first, min(first + 5, count))
        ]  # fmt: skip
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
        for i in range(first, min(first + 5, count)):
            shutil.rmtree(the_lab.tmp / f"{name}-{i}", ignore_errors=True)


def test_a_hundred_warm_pulls_cost_at_most_a_head_each(the_lab: Lab) -> None:
    """Multi-platform, so the access gate's vouching goes two levels (index, manifests,
    their blobs) without a request of its own."""
    img = index({"amd64": image([layer(100_000, "hundred")]),
                 "arm64": image([layer(50_000, "hundred-arm")], "arm64")})  # fmt: skip
    the_lab.push("registry-1.docker.io", "library/hundred", "v1", img)
    ref = "registry-1.docker.io/library/hundred:v1"
    out, _ = the_lab.pull(ref, "hundred-cold")
    assert out.returncode == 0, out.stderr
    hub = the_lab.registries["registry-1.docker.io"]
    gets, heads = hub.count("GET", "manifests"), hub.count("HEAD", "manifests")
    blob_gets, blob_heads = hub.count("GET", "blobs"), hub.count("HEAD", "blobs")
    _many_pulls(the_lab, ref, 100, "hundred")
    added = {"HEAD manifests": hub.count("HEAD", "manifests") - heads,
             "GET manifests": hub.count("GET", "manifests") - gets,
             "HEAD blobs": hub.count("HEAD", "blobs") - blob_heads,
             "GET blobs": hub.count("GET", "blobs") - blob_gets}  # fmt: skip
    (REPO / "artifacts").mkdir(exist_ok=True)
    (REPO / "artifacts" / "warm-path.json").write_text(json.dumps({"pulls": 100, **added}))
    assert hub.count("GET", "manifests") == gets  # zero manifest GETs
    assert hub.count("HEAD", "manifests") - heads <= 100  # one tag revalidation per pull
    assert (hub.count("GET", "blobs"), hub.count("HEAD", "blobs")) == (blob_gets, blob_heads)


def test_with_a_tag_ttl_warm_pulls_make_no_upstream_request(the_lab: Lab) -> None:
    img = image([layer(100_000, "ttl")])
    the_lab.push("quay.io", "org/ttl", "v1", img)
    out, _ = the_lab.pull("quay.io/org/ttl:v1", "ttl-cold")
    assert out.returncode == 0, out.stderr
    quay = the_lab.registries["quay.io"]
    seen = len(quay.requests())
    _many_pulls(the_lab, "quay.io/org/ttl:v1", 100, "ttl")
    assert quay.requests()[seen:] == []  # not even the /v2/ pings: answered for a minute
