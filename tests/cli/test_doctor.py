"""`regcache doctor`'s checks, on loopback only (the full path is in e2e/test_doctor.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from appliance.cli import doctor
from tests.harness import REGCACHE, REPO, free_port


def test_a_name_resolving_elsewhere_fails_with_the_resolver_fix() -> None:
    assert doctor.resolves_to("localhost", "127.0.0.1").ok  # /etc/hosts: nothing leaves
    elsewhere = doctor.resolves_to("localhost", "192.0.2.1")
    assert not elsewhere.ok
    assert "not the gateway 192.0.2.1" in elsewhere.detail
    assert "nameserver 192.0.2.1" in elsewhere.fix
    assert elsewhere.line().startswith("FAIL  dns localhost: ")


def test_a_gateway_not_listening_fails_tls_and_api_with_fixes() -> None:
    port = free_port()
    tls = doctor.tls_verifies("localhost", "127.0.0.1", port, None, "system")
    assert not tls.ok and "cannot connect to 127.0.0.1" in tls.detail
    assert "systemctl status regcache" in tls.fix
    api = doctor.registry_answers("localhost", port, None)
    assert not api.ok and "fix the dns and tls checks above first" in api.fix


def test_doctor_without_config_or_gateway_says_what_it_needs(tmp_path: Path) -> None:
    out = subprocess.run(
        [*REGCACHE, "--config", str(tmp_path / "absent.yaml"), "doctor"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2 and "doctor needs --gateway ADDR" in out.stderr
