"""regcache's own credentials: clients that send none pull from registries needing them,
and never write with them."""

from __future__ import annotations

import base64
import json

from tests.e2e.images import image, layer, write_layout
from tests.e2e.lab import ALICE_PASSWORD, BOB_PASSWORD, Lab

BOB = f"bob:{BOB_PASSWORD}"
ALICE = f"alice:{ALICE_PASSWORD}"


def test_clients_without_credentials_use_regcaches_basic_and_token_credentials(
    the_lab: Lab,
) -> None:
    basic_img, token_img = image([layer(300_000, "gcr")]), image([layer(300_000, "ecr")])
    # Publishers push around regcache: it lends its credentials to reads only.
    the_lab.push_upstream("gcr.io", "proj/app", "v1", basic_img, creds=BOB)
    the_lab.push_upstream("public.ecr.aws", "private/tool", "v1", token_img, creds=ALICE)
    for ref, name in (("gcr.io/proj/app:v1", "gcr"), ("public.ecr.aws/private/tool:v1", "ecr")):
        out, _ = the_lab.pull(ref, f"creds-{name}")  # no client credentials anywhere
        assert out.returncode == 0, (ref, out.stderr)
    gcr = the_lab.registries["gcr.io"]
    assert any(st == 200 and "/manifests/" in p for m, p, st, _ in gcr.requests() if m == "GET")
    log = the_lab.regcache_log.read_text()
    basic = [base64.b64encode(pair.encode()).decode() for pair in (BOB, ALICE)]
    for secret in (BOB_PASSWORD, ALICE_PASSWORD, *basic, "eyJ"):
        assert secret not in log, secret


def curl(lab: Lab, method: str, url: str, *args: str) -> int:
    out = lab.ns.run("curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", method,
                     "--cacert", str(lab.ca_dir / "ca.crt"), *args, url)  # fmt: skip
    return int(out.stdout)


def test_writes_from_clients_without_credentials_never_carry_regcaches(the_lab: Lab) -> None:
    """A push, a tag overwrite, a DELETE and a mount by a client that sends no
    credentials reach upstream without any; no push token is fetched with regcache's."""
    img, other = image([layer(200_000, "owned")]), image([layer(1000, "intruder")])
    the_lab.push_upstream("gcr.io", "proj/owned", "v1", img, creds=BOB)
    gcr = the_lab.registries["gcr.io"]
    before = len(gcr.requests())
    authenticated_before = gcr.log.read_text().count('auth.user.name="bob"')
    base = "https://gcr.io/v2/proj/owned"
    digest = img.top.digest
    statuses = {
        "push": curl(the_lab, "POST", f"{base}/blobs/uploads/"),
        "tag overwrite": curl(
            the_lab,
            "PUT",
            f"{base}/manifests/v1",
            "-H",
            f"Content-Type: {img.top.media_type}",
            "--data-binary",
            img.top.data.decode(),
        ),
        "delete": curl(the_lab, "DELETE", f"{base}/manifests/{digest}"),
        "mount": curl(
            the_lab, "POST", f"{base}/blobs/uploads/?mount={img.blobs[0].digest}&from=proj/owned"
        ),
    }
    assert statuses == dict.fromkeys(statuses, 401), statuses  # upstream's own no
    layout = write_layout(the_lab.tmp / "overwrite", "v1", other)
    out = the_lab.skopeo("copy", "--dest-cert-dir", str(the_lab.ca_dir), f"oci:{layout}:v1",
                         "docker://gcr.io/proj/owned:v1")  # fmt: skip
    assert out.returncode != 0
    writes = [r for r in gcr.requests()[before:] if r[0] in ("POST", "PUT", "PATCH", "DELETE")]
    assert len(writes) >= 4 and all(status == 401 for _, _, status, _ in writes), writes
    # distribution logs the user of every authenticated request: none since.
    assert gcr.log.read_text().count('auth.user.name="bob"') == authenticated_before
    out, _ = the_lab.pull("gcr.io/proj/owned:v1", "owned-after")  # reads still lent
    assert out.returncode == 0, out.stderr

    # The token flow: a push without credentials gets no token of alice's.
    assert the_lab.token_log is not None
    seen = len(the_lab.token_log.read_text().splitlines())
    ecr = the_lab.registries["public.ecr.aws"]
    before = len(ecr.requests())
    out = the_lab.skopeo("copy", "--dest-cert-dir", str(the_lab.ca_dir), f"oci:{layout}:v1",
                         "docker://public.ecr.aws/private/tool:v1")  # fmt: skip
    assert out.returncode != 0
    writes = [r for r in ecr.requests()[before:] if r[0] in ("POST", "PUT", "PATCH", "DELETE")]
    assert writes and all(status == 401 for _, _, status, _ in writes), writes
    requests = [json.loads(line) for line in the_lab.token_log.read_text().splitlines()[seen:]]
    lent = [r for r in requests if r["user"] and any("push" in x.rpartition(":")[2]
                                                     for x in r["scopes"])]  # fmt: skip
    assert not lent, lent
