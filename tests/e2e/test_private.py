"""Private images reach only clients whose credentials upstream accepts for them."""

from __future__ import annotations

import json

from tests.e2e.images import image, layer
from tests.e2e.lab import ALICE_PASSWORD, DAVE_PASSWORD, K8S_HOST, Lab
from tests.harness import REPO

ALICE = f"alice:{ALICE_PASSWORD}"
DAVE = f"dave:{DAVE_PASSWORD}"
MiB = 1 << 20
HUB = "registry-1.docker.io"


def status_and_body(lab: Lab, url: str, *headers: str) -> tuple[int, bytes]:
    body = lab.tmp / "probe.body"
    body.unlink(missing_ok=True)
    args = [a for h in headers for a in ("-H", h)]
    out = lab.ns.run("curl", "-sS", "--cacert", str(lab.ca_dir / "ca.crt"), "-o", str(body),
                     "-w", "%{http_code}", *args, url, timeout=60)  # fmt: skip
    return int(out.stdout), body.read_bytes() if body.exists() else b""


def test_private_image_reaches_only_its_owner(the_lab: Lab) -> None:
    shared = layer(MiB, "private-shared")
    private = image([shared, layer(200_000, "private-only")])
    public = image([shared, layer(1000, "public-only")])
    the_lab.push(HUB, "private/app", "v1", private, creds=ALICE)
    the_lab.push(HUB, "library/pub", "v1", public)

    out, _ = the_lab.pull(f"{HUB}/private/app:v1", "alice", creds=ALICE)
    assert out.returncode == 0, out.stderr  # A, with valid credentials, pulls (and fills)

    def refused_everywhere() -> None:
        for who, creds in (("bob", None), ("carol", "carol:wrong")):
            out, dest = the_lab.pull(f"{HUB}/private/app:v1", who, creds=creds)
            assert out.returncode != 0, who
            assert not (dest / "blobs").exists() or not any((dest / "blobs").rglob("*"))
        urls = [f"https://{HUB}/v2/private/app/manifests/{private.top.digest}"] + [
            f"https://{HUB}/v2/private/app/blobs/{b.digest}" for b in private.blobs
        ]
        for url in urls:
            for headers in ((), ("Authorization: Bearer forged",)):
                status, body = status_and_body(the_lab, url, *headers)
                assert status in (401, 403, 404), (url, headers, status)
                assert not any(b.data in body for b in (private.top, *private.blobs) if b.data)

    refused_everywhere()
    out, _ = the_lab.pull(f"{HUB}/library/pub:v1", "bob-public")  # shares the private layer
    assert out.returncode == 0, out.stderr
    the_lab.restart_regcache()  # nothing learned before a restart opens a path after it
    refused_everywhere()
    out, _ = the_lab.pull(f"{HUB}/private/app:v1", "alice-again", creds=ALICE)
    assert out.returncode == 0, out.stderr
    log = the_lab.regcache_log.read_text()
    assert "eyJ" not in log and "YWxpY2U6V29uZGVyLTFhbmQ=" not in log  # no token, no alice's Basic


def test_randomised_interleaving_of_owners_and_strangers_leaks_nothing(the_lab: Lab) -> None:
    """Hundreds of concurrent requests by digest, from alice and from clients without
    access, starting on uncached images so fills are cold and joined by strangers."""
    repositories = {}
    for i in range(3):
        img = image([layer(2 * MiB, f"r{i}a"), layer(300_000, f"r{i}b")])
        the_lab.push(HUB, f"private/mix{i}", "v1", img, creds=ALICE)
        repositories[f"private/mix{i}"] = [
            [b.digest, b.digest.removeprefix("sha256:"),
             "manifests" if b.media_type.endswith("manifest.v1+json") else "blobs"]
            for b in (img.top, *img.blobs)
        ]  # fmt: skip
    # Other names the strangers try: a public repository, dave's own, another registry,
    # and one that redirects every request (like registry.k8s.io).
    the_lab.push(HUB, "library/mixpub", "v1", image([layer(1000, "mixpub")]))
    the_lab.push(HUB, "dave/mine", "v1", image([layer(1000, "davemine")]), creds=DAVE)
    the_lab.push("ghcr.io", "org/mix", "v1", image([layer(1000, "ghcrmix")]))
    elsewhere = [[HUB, "library/mixpub"], [HUB, "dave/mine"], ["ghcr.io", "org/mix"],
                 [K8S_HOST, "pause"], [K8S_HOST, "private/mix0"]]  # fmt: skip
    spec = the_lab.tmp / "leakcheck.json"
    spec.write_text(json.dumps({
        "ca": str(the_lab.ca_dir / "ca.crt"), "host": HUB, "repositories": repositories,
        "elsewhere": elsewhere, "alice": ALICE, "dave": DAVE, "requests": 600,
        "seed": 20261205,
    }))  # fmt: skip
    out = the_lab.ns.run(str(REPO / ".venv/bin/python"), "-m", "tests.e2e.leakcheck", str(spec),
                         timeout=300, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    (REPO / "artifacts").mkdir(exist_ok=True)
    (REPO / "artifacts" / "leakcheck.json").write_text(json.dumps(summary, indent=1))
    assert summary["leaks"] == [] and summary["errors"] == [] and summary["wrong_bytes"] == []
    assert summary["ok"] > 50 and summary["refused"] > 300  # both kinds really happened


def test_during_an_outage_private_content_still_reaches_no_stranger(the_lab: Lab) -> None:
    shared = layer(MiB // 2, "outage-shared")
    private = image([shared, layer(100_000, "outage-private")])
    public = image([shared, layer(1000, "outage-public")])
    the_lab.push(HUB, "private/during", "v1", private, creds=ALICE)
    the_lab.push(HUB, "library/during", "v1", public)
    for ref, name, creds in ((f"{HUB}/private/during:v1", "o-alice", ALICE),
                             (f"{HUB}/library/during:v1", "o-public", None)):  # fmt: skip
        out, _ = the_lab.pull(ref, name, creds=creds)
        assert out.returncode == 0, out.stderr
    the_lab.stop_upstream()  # registries and token realm gone: regcache is on its own
    for who, creds in (("o-bob", None), ("o-carol", "carol:wrong")):
        out, _ = the_lab.pull(f"{HUB}/private/during:v1", who, creds=creds)
        assert out.returncode != 0, who
    for blob in private.blobs:
        status, body = status_and_body(
            the_lab, f"https://{HUB}/v2/private/during/blobs/{blob.digest}"
        )
        assert status in (401, 403, 404, 502) and blob.data not in body
    out, _ = the_lab.pull(f"{HUB}/library/during:v1", "o-public-again")  # public: still served
    assert out.returncode == 0, out.stderr
