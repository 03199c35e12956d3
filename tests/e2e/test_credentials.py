"""regcache's own credentials: clients that send none pull from registries needing them."""

from __future__ import annotations

import base64

from tests.e2e.images import image, layer
from tests.e2e.lab import ALICE_PASSWORD, BOB_PASSWORD, Lab


def test_clients_without_credentials_use_regcaches_basic_and_token_credentials(
    the_lab: Lab,
) -> None:
    basic_img, token_img = image([layer(300_000, "gcr")]), image([layer(300_000, "ecr")])
    the_lab.push("gcr.io", "proj/app", "v1", basic_img)  # no client credentials anywhere
    the_lab.push("public.ecr.aws", "private/tool", "v1", token_img)
    for ref, name in (("gcr.io/proj/app:v1", "gcr"), ("public.ecr.aws/private/tool:v1", "ecr")):
        out, _ = the_lab.pull(ref, f"creds-{name}")
        assert out.returncode == 0, (ref, out.stderr)
    gcr = the_lab.registries["gcr.io"]
    assert any(st == 200 and "/manifests/" in p for m, p, st, _ in gcr.requests() if m == "GET")
    log = the_lab.regcache_log.read_text()
    basic = [base64.b64encode(pair.encode()).decode()
             for pair in (f"bob:{BOB_PASSWORD}", f"alice:{ALICE_PASSWORD}")]  # fmt: skip
    for secret in (BOB_PASSWORD, ALICE_PASSWORD, *basic, "eyJ"):
        assert secret not in log, secret
