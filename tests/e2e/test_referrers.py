"""Signatures and other referrers through regcache, against distribution 2.8, which has
no referrers API: regcache answers `GET /v2/<name>/referrers/<digest>` from the spec's
fallback tag `sha256-<hex>` (what oras and cosign maintain on such a registry), the
signature is fetched through it and then served warm with no upstream GET, a new one
pushed upstream or through regcache shows at once, cosign's `.sig` tag is cached like any
tag, and all of it is served while upstream is down."""

from __future__ import annotations

import hashlib
import json
import subprocess
from typing import Any
from urllib.parse import quote

from tests.e2e.images import image, layer
from tests.e2e.lab import UPSTREAMS, Lab
from tests.harness import REPO

REGISTRY, REPOSITORY = "ghcr.io", "sig/app"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
EMPTY = "application/vnd.oci.empty.v1+json"
SIG = "application/vnd.dev.cosign.artifact.sig.v1+json"
SBOM = "application/spdx+json"
SBOM_QUERY = quote(SBOM, safe="")


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _artifact(lab: Lab, name: str, artifact_type: str, subject: dict[str, Any]) -> dict[str, Any]:
    """An artifact manifest about `subject` and its blobs, written to files; its
    descriptor (with artifactType, as a referrers list carries it) and the items to push."""
    payload = f"{name}: signed {subject['digest']}".encode()
    files = lab.tmp / "artifacts"
    files.mkdir(exist_ok=True)
    (files / f"{name}.payload").write_bytes(payload)
    (files / "empty").write_bytes(b"{}")
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
        "config": {"mediaType": EMPTY, "digest": _digest(b"{}"), "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": _digest(payload),
                    "size": len(payload)}],
        "subject": subject,
    }).encode()  # fmt: skip
    (files / f"{name}.json").write_bytes(manifest)
    descriptor = {"mediaType": OCI_MANIFEST, "digest": _digest(manifest), "size": len(manifest),
                  "artifactType": artifact_type}  # fmt: skip
    items = [{"blob": str(files / "empty")}, {"blob": str(files / f"{name}.payload")},
             {"manifest": str(files / f"{name}.json"), "media_type": OCI_MANIFEST,
              "reference": descriptor["digest"]}]  # fmt: skip
    return {"descriptor": descriptor, "items": items, "payload": payload, "manifest": manifest}


def _fallback(lab: Lab, subject: str, descriptors: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The fallback tag's index: what oras pushes after each artifact on a registry
    without the referrers API."""
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors})
    path = lab.tmp / "artifacts" / f"fallback-{len(descriptors)}.json"
    path.write_text(body)
    tag = subject.replace(":", "-")
    return [{"manifest": str(path), "media_type": OCI_INDEX, "reference": tag}]


def _push_upstream(lab: Lab, items: list[dict[str, str]]) -> None:
    """Straight to the upstream registry, around regcache (its name from /etc/hosts)."""
    assert lab.upstream_ca is not None
    hosts = lab.tmp / "hosts-artifacts"
    hosts.write_text(f"{UPSTREAMS[REGISTRY]} {REGISTRY}\n")
    spec = lab.tmp / "artifacts" / "items.json"
    spec.write_text(json.dumps(items))
    python, ca = REPO / ".venv/bin/python", lab.upstream_ca.pem
    push = (f"mount --bind {hosts} /etc/hosts && exec {python} -m tests.e2e.ocipush "
            f"https://{REGISTRY} {ca} {REPOSITORY} {spec}")  # fmt: skip
    out = lab.ns.run("unshare", "--mount", "sh", "-c", push, timeout=120, check=False)
    assert out.returncode == 0, out.stderr


def _push_through(lab: Lab, items: list[dict[str, str]]) -> None:
    """Through regcache, by the registry's name (the lab's resolver is regcache)."""
    spec = lab.tmp / "artifacts" / "items-through.json"
    spec.write_text(json.dumps(items))
    out = lab.ns.run(str(REPO / ".venv/bin/python"), "-m", "tests.e2e.ocipush",
                     f"https://{REGISTRY}", str(lab.ca_dir / "ca.crt"), REPOSITORY, str(spec),
                     timeout=120, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr


def _get(lab: Lab, path: str) -> tuple[int, dict[str, str], bytes]:
    """GET through regcache, as a build host would."""
    body, head = lab.tmp / "ref.body", lab.tmp / "ref.head"
    body.unlink(missing_ok=True)
    out = subprocess.run(lab.ns.argv(
        "curl", "-sS", "--cacert", str(lab.ca_dir / "ca.crt"), "-o", str(body), "-D", str(head),
        "-w", "%{http_code}", "-H", f"Accept: {OCI_MANIFEST}, {OCI_INDEX}",
        f"https://{REGISTRY}/v2/{REPOSITORY}{path}",
    ), capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    headers = {}
    for line in head.read_text().splitlines()[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(out.stdout), headers, body.read_bytes() if body.exists() else b""


def _upstream_gets(lab: Lab) -> int:
    return sum(1 for method, *_ in lab.registries[REGISTRY].requests() if method == "GET")


def test_signatures_are_listed_fetched_warm_refreshed_and_served_in_an_outage(
    the_lab: Lab,
) -> None:
    img = image([layer(100_000, "signed-image")])
    the_lab.push_upstream(REGISTRY, REPOSITORY, "v1", img)
    subject = {"mediaType": OCI_MANIFEST, "digest": img.top.digest, "size": len(img.top.data)}
    sig = _artifact(the_lab, "sig", SIG, subject)
    _push_upstream(
        the_lab, [*sig["items"], *_fallback(the_lab, img.top.digest, [sig["descriptor"]])]
    )

    status, headers, body = _get(the_lab, f"/referrers/{img.top.digest}")
    assert status == 200 and headers["content-type"] == OCI_INDEX, (status, body)
    assert json.loads(body)["manifests"] == [sig["descriptor"]]
    status, headers, body = _get(the_lab, f"/referrers/{img.top.digest}?artifactType={SBOM_QUERY}")
    assert status == 200 and json.loads(body)["manifests"] == []
    assert headers["oci-filters-applied"] == "artifactType"
    payload = json.loads(sig["manifest"])["layers"][0]["digest"]
    assert _get(the_lab, f"/manifests/{sig['descriptor']['digest']}")[2] == sig["manifest"]
    assert _get(the_lab, f"/blobs/{payload}")[2] == sig["payload"]

    gets = _upstream_gets(the_lab)  # warm: listed and fetched again, no upstream GET
    assert json.loads(_get(the_lab, f"/referrers/{img.top.digest}")[2])["manifests"] == [
        sig["descriptor"]]  # fmt: skip
    assert _get(the_lab, f"/manifests/{sig['descriptor']['digest']}")[2] == sig["manifest"]
    assert _get(the_lab, f"/blobs/{payload}")[2] == sig["payload"]
    assert _upstream_gets(the_lab) == gets

    sbom = _artifact(the_lab, "sbom", SBOM, subject)  # another one, pushed upstream
    both = [sig["descriptor"], sbom["descriptor"]]
    _push_upstream(the_lab, [*sbom["items"], *_fallback(the_lab, img.top.digest, both)])
    assert json.loads(_get(the_lab, f"/referrers/{img.top.digest}")[2])["manifests"] == both
    listed = _get(the_lab, f"/referrers/{img.top.digest}?artifactType={SBOM_QUERY}")[2]
    assert json.loads(listed)["manifests"] == [sbom["descriptor"]]

    # One pushed through regcache (as a build host signs): listed at once too.
    att = _artifact(the_lab, "att", "application/vnd.in-toto+json", subject)
    three = [*both, att["descriptor"]]
    _push_through(the_lab, [*att["items"], *_fallback(the_lab, img.top.digest, three)])
    assert json.loads(_get(the_lab, f"/referrers/{img.top.digest}")[2])["manifests"] == three

    # cosign's own tag schema: `sha256-<hex>.sig`, a tag like any other.
    cosign_tag = img.top.digest.replace(":", "-") + ".sig"
    _push_upstream(the_lab, [{"manifest": sig["items"][2]["manifest"], "media_type": OCI_MANIFEST,
                              "reference": cosign_tag}])  # fmt: skip
    assert _get(the_lab, f"/manifests/{cosign_tag}")[2] == sig["manifest"]

    the_lab.stop_upstream()  # the lab's last act: it is this module's alone
    assert json.loads(_get(the_lab, f"/referrers/{img.top.digest}")[2])["manifests"] == three
    assert _get(the_lab, f"/manifests/{cosign_tag}")[2] == sig["manifest"]
    assert _get(the_lab, f"/blobs/{payload}")[2] == sig["payload"]
