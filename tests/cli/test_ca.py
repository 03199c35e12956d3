"""`regcache ca init|export|show`."""

from __future__ import annotations

from pathlib import Path

from cryptography import x509

from tests.harness import write_config


def test_ca_export_writes_pem_to_stdout_and_fingerprint_to_stderr(tmp_path: Path) -> None:
    rc = write_config(tmp_path)
    assert rc.cli("ca", "export", check=False).returncode == 1  # no CA yet: clear error
    rc.cli("ca", "init")
    out = rc.cli("ca", "export")
    cert = x509.load_pem_x509_certificate(out.stdout.encode())
    assert "SHA256 fingerprint" in out.stderr and "regcache CA" in out.stderr
    assert "PRIVATE" not in out.stdout
    again = rc.cli("ca", "init")
    assert "already exists" in again.stdout
    assert x509.load_pem_x509_certificate(rc.cli("ca", "export").stdout.encode()) == cert


def test_ca_show_names_the_constraints_and_the_fingerprint_export_gives(tmp_path: Path) -> None:
    rc = write_config(tmp_path)
    rc.cli("ca", "init")
    shown = rc.cli("ca", "show").stdout
    exported = rc.cli("ca", "export").stderr
    fingerprint = next(line for line in shown.splitlines() if line.startswith("fingerprint:"))
    assert fingerprint.split("SHA256 ")[1] in exported
    assert "constraints:  DNS names under" in shown and "docker.io" in shown
