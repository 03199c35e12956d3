"""No leaks, no borrowed identity (#13), from build hosts' point of view: after the owner
pulls a private image, clients without access ask for every one of its digests by every
name regcache answers to — the private repository, a public one on the same host, their
own private repository, another registry, a registry that redirects everything — online,
after a restart, offline, during an outage and after a restart during it. The real
upstreams, asked directly, say what each client may read."""

from __future__ import annotations

import hashlib
import json
import subprocess
import time
from collections import Counter
from typing import Any

from tests.e2e.images import OCI_INDEX, OCI_MANIFEST, image, index, layer
from tests.e2e.lab import (
    ALICE_PASSWORD,
    DAVE_PASSWORD,
    K8S_HOST,
    K8S_IP,
    TOKEN_HOST,
    TOKEN_IP,
    UPSTREAMS,
    Lab,
)
from tests.harness import REPO

HUB = "registry-1.docker.io"
ALICE, DAVE = f"alice:{ALICE_PASSWORD}", f"dave:{DAVE_PASSWORD}"
WHO = ("none", "anonymous", "wrong", "dave")
PATHS = (
    (HUB, "private/app"),  # the private repository itself
    (HUB, "library/pub"),  # a public repository that shares a layer with it
    (HUB, "dave/own"),  # dave's own private repository, with his own token
    ("ghcr.io", "org/app"),  # another registry
    (K8S_HOST, "pause"),  # a registry that redirects everything, by a real image's name
    (K8S_HOST, "private/app"),  # ...and by the private one's
)
METHODS = ("GET", "HEAD", "RANGE")
ARTIFACT = REPO / "artifacts" / "access-matrix.json"


def kind_of(media_type: str) -> str:
    return "manifests" if media_type in (OCI_INDEX, OCI_MANIFEST) else "blobs"


def run_probes(lab: Lab, digests: dict[str, str], *, oracle: bool) -> list[dict[str, Any]]:
    assert lab.upstream_ca is not None
    spec = {
        "ca": str(lab.ca_dir / "ca.crt"),
        "upstream_ca": str(lab.upstream_ca.pem),
        "addresses": {**UPSTREAMS, TOKEN_HOST: TOKEN_IP, K8S_HOST: K8S_IP},
        "creds": {"dave": DAVE, "wrong": "carol:wrong-password"},
        "control": "sha256:" + hashlib.sha256(b"nobody has this").hexdigest(),
        "oracle": oracle,
        "probes": [
            {
                "who": who,
                "host": host,
                "repository": repository,
                "kind": kind,
                "digest": digest,
                "method": method,
            }
            for who in WHO
            for host, repository in PATHS
            for digest, kind in digests.items()
            for method in METHODS
        ],
    }
    path = lab.tmp / "probe.json"
    path.write_text(json.dumps(spec))
    out = lab.ns.run(str(REPO / ".venv/bin/python"), "-m", "tests.e2e.probe", str(path),
                     timeout=300, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr
    results: list[dict[str, Any]] = json.loads(out.stdout)
    return results


def key(r: dict[str, Any]) -> tuple[str, ...]:
    return (r["who"], r["host"], r["repository"], r["digest"])


def judge(results: list[dict[str, Any]], allowed: dict[tuple[str, ...], bool]) -> dict[str, Any]:
    """Leaks: 2xx for what upstream lets neither this client nor anyone read. Tells:
    a refusal unlike the one for a digest nobody has. Over-refusals: no 2xx where
    upstream would say yes."""
    ok = [r for r in results if r["status"] in (200, 206)]
    refused = [r for r in results if r["status"] not in (200, 206)]
    return {
        "probes": len(results),
        "errors": [r for r in results if "error" in r],
        "leaks": [r for r in ok if not allowed[key(r)]],
        "tells": [r for r in refused if r["status"] != r["control"]],
        "over_refused": [r for r in refused if allowed[key(r)]],
        "served": len(ok),
        "statuses": dict(Counter(str(r["status"]) for r in results)),
    }


def pull(lab: Lab, ref: str, name: str, creds: str | None = None) -> None:
    out, _ = lab.pull(ref, name, creds=creds)
    assert out.returncode == 0, (ref, out.stderr)


def test_no_client_gets_private_content_by_any_name_in_any_state(the_lab: Lab) -> None:
    shared = layer(300_000, "matrix-shared")
    private = index({"amd64": image([shared, layer(200_000, "matrix-private")]),
                     "arm64": image([layer(100_000, "matrix-private-arm")], "arm64")})  # fmt: skip
    public = image([shared, layer(1000, "matrix-public")])
    the_lab.push(HUB, "private/app", "v1", private, creds=ALICE)
    the_lab.push(HUB, "library/pub", "v1", public)
    the_lab.push(HUB, "dave/own", "v1", image([layer(1000, "dave")]), creds=DAVE)
    the_lab.push("ghcr.io", "org/app", "v1", image([layer(1000, "ghcr-app")]))
    pause = image([layer(50_000, "pause")])
    the_lab.push("us-docker.pkg.dev", "k8s-artifacts-prod/images/pause", "3.9", pause)

    pull(the_lab, f"{HUB}/private/app:v1", "owner", creds=ALICE)  # fills every private digest
    pull(the_lab, f"{HUB}/library/pub:v1", "public")
    pull(the_lab, f"{K8S_HOST}/pause:3.9", "k8s")  # manifests and blobs all redirected
    digests = {b.digest: kind_of(b.media_type) for b in (private.top, *private.blobs)}

    results = run_probes(the_lab, digests, oracle=True)
    allowed = {
        key(r): 200 <= r["own"] < 300 or 200 <= r["anyone"] < 300 for r in results if "own" in r
    }
    assert allowed[("anonymous", HUB, "library/pub", shared.digest)]  # the oracle is not vacuous
    assert not allowed[("dave", HUB, "private/app", private.top.digest)]
    report = {"online": judge(results, allowed)}

    # Referrers of a private digest reach no stranger: asked upstream with their credentials.
    hub = the_lab.registries[HUB]
    seen = len(hub.requests())
    for repository in ("private/app", "library/pub"):
        url = f"https://{HUB}/v2/{repository}/referrers/{private.top.digest}"
        out = the_lab.ns.run("curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert",
                             str(the_lab.ca_dir / "ca.crt"), url)  # fmt: skip
        assert not out.stdout.startswith("2"), (repository, out.stdout)
    # Each asked upstream as that client: the API (distribution 2.8 has none: 404), then
    # the fallback tag in that repository, refused to an anonymous client.
    fallback = private.top.digest.replace(":", "-")
    asked = hub.requests()[seen:]
    assert sum("/referrers/" in path for _, path, _, _ in asked) == 2, asked
    assert sum(f"/manifests/{fallback}" in path for _, path, _, _ in asked) >= 2, asked

    def phase(name: str, check_pulls: bool = True) -> None:
        report[name] = judge(run_probes(the_lab, digests, oracle=False), allowed)
        if check_pulls:  # public images still pull for a client never seen before
            pull(the_lab, f"{HUB}/library/pub:v1", f"public-{name}")
            pull(the_lab, f"{K8S_HOST}/pause:3.9", f"k8s-{name}")

    the_lab.restart_regcache()
    phase("after restart")
    regcache = [str(REPO / ".venv/bin/regcache"), "--config", str(the_lab.config_path)]
    subprocess.run([*regcache, "offline", "on"], check=True, capture_output=True)
    time.sleep(1.2)  # the server looks at the switch at most once a second
    try:
        phase("offline")
    finally:
        subprocess.run([*regcache, "offline", "off"], check=True, capture_output=True)
    time.sleep(1.2)
    the_lab.stop_upstream()  # every registry, the redirector and the token realm
    phase("outage")
    the_lab.restart_regcache()
    phase("outage after restart")

    ARTIFACT.parent.mkdir(exist_ok=True)
    ARTIFACT.write_text(json.dumps(report, indent=1))
    for name, figures in report.items():
        assert figures["errors"] == [], (name, figures["errors"][:3])
        assert figures["leaks"] == [], (name, figures["leaks"][:5])
        assert figures["tells"] == [], (name, figures["tells"][:5])
        assert figures["over_refused"] == [], (name, figures["over_refused"][:5])
        assert figures["served"] > 0  # the shared layer, through the public repository
    log = the_lab.regcache_log.read_text()
    assert "Traceback" not in log
