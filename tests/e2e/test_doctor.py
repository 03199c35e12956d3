"""`regcache doctor` from a build host's point of view: inside the lab's namespace, whose
resolver is regcache, against real upstream registries."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.e2e.lab import REGCACHE_IP, REPO, Lab

REGCACHE = str(REPO / ".venv" / "bin" / "regcache")


def doctor(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    assert lab.config_path is not None
    return lab.ns.run(REGCACHE, "doctor", *args, timeout=120, check=False)


def test_doctor_passes_on_a_working_path_and_names_fixes_otherwise(
    the_lab: Lab, tmp_path: Path
) -> None:
    docker = tmp_path / "docker-certs.d"
    (docker / "ghcr.io").mkdir(parents=True)
    shutil.copy(lab_ca := the_lab.ca_dir / "ca.crt", docker / "ghcr.io" / "ca.crt")
    hosts = ("--host", "ghcr.io", "--host", "quay.io")
    # On the gateway (its config): dns, tls, api, and upstream reachable from regcache.
    out = doctor(the_lab, "--config", str(the_lab.config_path), "--ca", str(lab_ca), *hosts,
                 "--cert-dir", str(tmp_path / "absent"))  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    for check in ("dns ghcr.io", "tls ghcr.io (given CA)", "api ghcr.io", "upstream quay.io"):
        assert any(line.startswith(f"PASS  {check}:") for line in lines), out.stdout
    assert f"→ {REGCACHE_IP}" in out.stdout and "8 passed, 0 failed" in out.stdout

    # A build host (no config) that lacks the CA in docker's directory for quay.io and
    # whose system store does not trust regcache: each failure says what to do.
    out = doctor(the_lab, "--config", str(tmp_path / "none.yaml"), "--gateway", REGCACHE_IP,
                 *hosts, "--cert-dir", str(docker))  # fmt: skip
    assert out.returncode == 1
    assert f"PASS  dns quay.io: → {REGCACHE_IP}" in out.stdout
    assert f"PASS  tls ghcr.io ({docker}):" in out.stdout
    assert f"FAIL  tls quay.io ({docker}): {docker}/quay.io/ca.crt is missing" in out.stdout
    assert f"fix: copy the regcache CA to {docker}/quay.io/ca.crt" in out.stdout
    assert "FAIL  tls ghcr.io (system)" in out.stdout and "update-ca-certificates" in out.stdout

    # Names that resolve elsewhere than the gateway.
    out = doctor(the_lab, "--config", str(tmp_path / "none.yaml"), "--gateway", "127.0.0.99",
                 "--ca", str(lab_ca), "--host", "ghcr.io")  # fmt: skip
    assert out.returncode == 1
    assert f"FAIL  dns ghcr.io: → {REGCACHE_IP}, not the gateway 127.0.0.99" in out.stdout
    assert "nameserver 127.0.0.99" in out.stdout
