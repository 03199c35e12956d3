"""`regcache serve` lifecycle and `ca export` to stdout."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from cryptography import x509

from tests.harness import REGCACHE, REPO, free_port, write_config


def test_serve_logs_lifecycle_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    rc = write_config(tmp_path, dns={"upstreams": [f"127.0.0.1:{free_port()}"]})
    rc.start()
    assert rc.proc is not None
    rc.proc.send_signal(signal.SIGTERM)
    assert rc.proc.wait(timeout=10) == 0
    rc.proc = None
    log = rc.log()
    for line in ("ca created", "dns listening", "https listening", "regcache ready",
                 "regcache stopping reason=signal", "regcache stopped"):  # fmt: skip
        assert line in log, line
    assert "Traceback" not in log


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


def test_config_option_is_accepted_after_the_subcommand(tmp_path: Path) -> None:
    rc = write_config(tmp_path)
    out = subprocess.run(
        [*REGCACHE, "ca", "init", "--config", str(rc.config_path)],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0 and (rc.state_dir / "ca" / "ca.crt").exists(), out.stderr


def test_a_taken_port_is_a_clear_startup_error(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_config(tmp_path / "a", dns={"upstreams": ["127.0.0.1:9"]})
    second = write_config(tmp_path / "b", dns={"upstreams": ["127.0.0.1:9"]})
    config = second.config_path.read_text().replace(str(second.dns_port), str(first.dns_port))
    second.config_path.write_text(config)
    first.start()
    try:
        out = second.cli("serve", check=False)
    finally:
        first.stop()
    assert out.returncode == 1
    assert (
        f"cannot listen for DNS on 127.0.0.1:{first.dns_port}: Address already in use" in out.stderr
    )
    assert "Traceback" not in out.stderr
