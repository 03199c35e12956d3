"""The local registry by DNS, with every upstream stopped: real clients push, pull, list
tags and delete; a signature artifact is found through the referrers API; access is by
htpasswd users through regcache's own token realm; `cache ls` and `status` show it."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import _missing
from tests.e2e.images import image, layer, write_layout
from tests.e2e.lab import Lab, lab
from tests.e2e.test_push import _peak_rss_kib
from tests.harness import REPO

LOCAL = "registry.build.internal"
KiB = 1 << 10
BUILDER = "builder:b-secret"
READER = "reader:r-secret"


def _tweak(tmp: Path) -> Any:
    def tweak(config: dict[str, Any]) -> None:
        users = tmp / "local-htpasswd"
        for creds in (BUILDER, READER):
            user, password = creds.split(":")
            out = subprocess.run(["htpasswd", "-nbB", user, password], capture_output=True,
                                 text=True, check=True)  # fmt: skip
            with users.open("a") as f:
                f.write(out.stdout)
        config["tls"]["permitted_domains"].append(LOCAL)  # the CA may sign for it
        config["local"] = {
            "hosts": [LOCAL],
            "auth": {"htpasswd": str(users)},
            "access": [{"repositories": ["*"], "read": ["*"], "write": ["builder"]}],
        }

    return tweak


@pytest.fixture(scope="module")
def llab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("local")
    with lab(tmp, _tweak(tmp)) as running:
        running.stop_upstream()  # nothing below may need an upstream
        yield running


def _copy(llab: Lab, src: str, dest: str, *creds: str) -> subprocess.CompletedProcess[str]:
    return llab.skopeo("copy", "--all", "--preserve-digests", "--src-cert-dir",
                       str(llab.ca_dir), "--dest-cert-dir", str(llab.ca_dir), *creds, src,
                       dest)  # fmt: skip


def _curl(llab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    return llab.ns.run("curl", "-sS", "--cacert", str(llab.ca_dir / "ca.crt"), *args,
                       timeout=60, check=False)  # fmt: skip


def _token(llab: Lab, creds: str, scope: str) -> str:
    out = _curl(llab, "-u", creds, f"https://{LOCAL}/token?service={LOCAL}&scope={scope}")
    token: str = json.loads(out.stdout)["token"]
    return token


def test_skopeo_and_podman_push_and_pull_with_upstream_down(llab: Lab) -> None:
    img = image([layer(200 * KiB, "local-a"), layer(50 * KiB, "local-b")])
    layout = write_layout(llab.tmp / "local-src", "v1", img)
    out = _copy(llab, f"oci:{layout}:v1", f"docker://{LOCAL}/team/app:v1",
                "--dest-creds", BUILDER)  # fmt: skip
    assert out.returncode == 0, out.stderr
    dest = llab.tmp / "local-back"
    out = _copy(llab, f"docker://{LOCAL}/team/app:v1", f"oci:{dest}:x", "--src-creds", READER)
    assert out.returncode == 0, out.stderr
    pulled = json.loads((dest / "index.json").read_text())["manifests"][0]["digest"]
    assert pulled == img.top.digest
    # podman, logged in through the token realm, pushes a second tag and pulls it back.
    podman = ["podman", "--root", str(llab.tmp / "podman-root"), "--runroot",
              str(llab.tmp / "podman-run"), "--storage-driver", "vfs"]  # fmt: skip
    certs = ["--cert-dir", str(llab.ca_dir)]
    run = llab.ns.run
    assert run(*podman, "pull", *certs, "--creds", READER, f"{LOCAL}/team/app:v1",
               check=False, timeout=300).returncode == 0  # fmt: skip
    assert run(*podman, "tag", f"{LOCAL}/team/app:v1", f"{LOCAL}/team/app:v2",
               check=False).returncode == 0  # fmt: skip
    out = run(*podman, "push", *certs, "--creds", BUILDER, f"{LOCAL}/team/app:v2",
              check=False, timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    out = llab.skopeo("list-tags", "--cert-dir", str(llab.ca_dir), "--creds", READER,
                      f"docker://{LOCAL}/team/app")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["Tags"] == ["v1", "v2"]


def test_a_reader_may_not_push_and_an_anonymous_client_is_challenged(llab: Lab) -> None:
    layout = write_layout(llab.tmp / "local-denied", "v1", image([layer(10 * KiB, "deny")]))
    out = _copy(llab, f"oci:{layout}:v1", f"docker://{LOCAL}/team/app:evil",
                "--dest-creds", READER)  # fmt: skip
    assert out.returncode != 0
    assert "denied" in out.stderr.lower() or "unauthorized" in out.stderr.lower(), out.stderr
    out = _curl(llab, "-o", "/dev/null", "-w", "%{http_code}", f"https://{LOCAL}/v2/")
    assert out.stdout == "401"


def test_delete_and_referrers_with_a_signature_artifact(llab: Lab) -> None:
    img = image([layer(30 * KiB, "signed")])
    layout = write_layout(llab.tmp / "local-signed", "v1", img)
    assert _copy(llab, f"oci:{layout}:v1", f"docker://{LOCAL}/team/signed:v1",
                 "--dest-creds", BUILDER).returncode == 0  # fmt: skip
    token = _token(llab, BUILDER, "repository:team/signed:pull,push,delete")
    auth = ["-H", f"Authorization: Bearer {token}"]
    base = f"https://{LOCAL}/v2/team/signed"
    empty = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    out = _curl(llab, *auth, "-X", "POST", "--data-binary", "{}",
                "-H", "Content-Type: application/octet-stream",
                f"{base}/blobs/uploads/?digest={empty}", "-o", "/dev/null", "-w",
                "%{http_code}")  # fmt: skip
    assert out.stdout == "201", out.stderr
    accept = "Accept: application/vnd.oci.image.manifest.v1+json"
    manifest = _curl(llab, *auth, "-H", accept, f"{base}/manifests/v1").stdout
    signature = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.dev.cosign.artifact.sig.v1+json",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty,
                   "size": 2},
        "layers": [], "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                  "digest": img.top.digest, "size": len(manifest)},
    })  # fmt: skip
    sig_file = llab.tmp / "signature.json"
    sig_file.write_text(signature)
    out = _curl(llab, *auth, "-X", "PUT", "-D", "-", "-o", "/dev/null", "-H",
                "Content-Type: application/vnd.oci.image.manifest.v1+json",
                "--data-binary", f"@{sig_file}", f"{base}/manifests/sig")  # fmt: skip
    assert f"oci-subject: {img.top.digest}" in out.stdout.lower(), out.stdout
    out = _curl(llab, *auth, f"{base}/referrers/{img.top.digest}")
    (found,) = json.loads(out.stdout)["manifests"]
    assert found["artifactType"] == "application/vnd.dev.cosign.artifact.sig.v1+json"
    out = _curl(llab, *auth, "-X", "DELETE", "-o", "/dev/null", "-w", "%{http_code}",
                f"{base}/manifests/{img.top.digest}")  # fmt: skip
    assert out.stdout == "202"
    out = _copy(llab, f"docker://{LOCAL}/team/signed:v1", f"oci:{llab.tmp / 'gone'}:x",
                "--src-creds", READER)  # fmt: skip
    assert out.returncode != 0 and "manifest unknown" in out.stderr.lower(), out.stderr


def test_cache_ls_du_and_status_show_the_local_registry(llab: Lab) -> None:
    config = str(llab.config_path)
    regcache = str(REPO / ".venv" / "bin" / "regcache")
    out = llab.ns.run(regcache, "cache", "ls", "--config", config, check=False)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines()]
    assert [LOCAL, "team/app", "v1,v2"] in [r[:3] for r in rows], out.stdout
    assert all(r[-1] == "yes" for r in rows if r[0] == LOCAL), out.stdout  # never evicted
    out = llab.ns.run(regcache, "cache", "du", "--config", config, "--json", check=False)
    assert out.returncode == 0, out.stderr
    usage = {r["registry"]: r for r in json.loads(out.stdout)["registries"]}
    assert usage[LOCAL]["images"] >= 1 and usage[LOCAL]["bytes"] > 250 * KiB, usage
    out = llab.ns.run(regcache, "status", "--config", config, check=False)
    assert out.returncode == 0, out.stderr
    assert "local registry" in out.stdout.lower(), out.stdout


def test_a_gib_pushed_in_one_chunked_patch_streams_with_flat_memory(llab: Lab) -> None:
    """docker's way (a PATCH of unknown length, then the PUT), random bytes hashed on the
    client side, pulled back whole: regcache's peak RSS does not grow with the body."""
    assert llab.regcache_proc is not None
    pid = llab.regcache_proc.pid  # `ip netns exec` execs regcache: the same process
    ca, base, size = llab.ca_dir / "ca.crt", f"https://{LOCAL}/v2/team/big", 1 << 30
    curl = f"curl -sS --cacert {ca} -u {BUILDER}"
    script = f"""set -eu
location() {{ tr -d '\\r' | sed -n 's/^[Ll]ocation: //p'; }}
loc=$({curl} -D - -o /dev/null -X POST {base}/blobs/uploads/ | location)
head -c {size} /dev/urandom | tee >(sha256sum | cut -d' ' -f1 > {llab.tmp}/big.sum) |
  {curl} -D {llab.tmp}/big.headers -o /dev/null -X PATCH -T - "https://{LOCAL}$loc"
sleep 1
loc=$(location < {llab.tmp}/big.headers)
{curl} -f -o /dev/null -X PUT "https://{LOCAL}$loc?digest=sha256:$(cat {llab.tmp}/big.sum)"
{curl} -f {base}/blobs/sha256:$(cat {llab.tmp}/big.sum) | sha256sum | cut -d' ' -f1
"""
    before = _peak_rss_kib(pid)
    out = llab.ns.run("bash", "-c", script, timeout=600, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    grown = _peak_rss_kib(pid) - before
    assert out.stdout.strip() == (llab.tmp / "big.sum").read_text().strip()  # pulled back whole
    artifacts = REPO / "artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "local-push-rss.json").write_text(json.dumps({"bytes": size,
                                                               "grown_kib": grown}))  # fmt: skip
    assert grown < 64 << 10, f"peak RSS grew {grown} KiB over a {size}-byte push"
