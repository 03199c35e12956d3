"""The CA: name constraints that clients enforce, file modes, rotation, expiry, mismatches."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.tls.ca import load_ca, rotate_ca, to_pem
from appliance.tls.leaves import load_chain
from tests.harness import Regcache, free_port, running, write_config
from tests.tls.cas import NOW, YEAR, new_ca
from tests.tls.clients import python_handshake, s_client


def test_ca_is_p256_with_critical_name_constraints(tmp_path: Path) -> None:
    ca = new_ca(tmp_path)
    assert isinstance(ca.key, ec.EllipticCurvePrivateKey) and ca.key.curve.name == "secp256r1"
    ext = ca.cert.extensions.get_extension_for_class(x509.NameConstraints)
    assert ext.critical
    assert ext.value.permitted_subtrees == [x509.DNSName("docker.io"), x509.DNSName("ghcr.io")]
    assert ext.value.excluded_subtrees == [
        x509.IPAddress(ipaddress.ip_network("0.0.0.0/0")),
        x509.IPAddress(ipaddress.ip_network("::/0")),
    ]
    basic = ca.cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca


def test_each_install_gets_its_own_ca(tmp_path: Path) -> None:
    a, b = new_ca(tmp_path / "a"), new_ca(tmp_path / "b")
    assert a.cert.public_key() != b.cert.public_key() and a.cert.subject != b.cert.subject


def test_ca_files_are_private_even_under_a_loose_umask(tmp_path: Path) -> None:
    old = os.umask(0o000)
    try:
        new_ca(tmp_path)
    finally:
        os.umask(old)
    assert (tmp_path / "ca").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "ca" / "ca.key").stat().st_mode & 0o777 == 0o600


def _leaf_for(ca, san: x509.GeneralName) -> x509.Certificate:  # type: ignore[no-untyped-def]
    key = ec.generate_private_key(ec.SECP256R1())
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(hours=1))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([san]), critical=True)
        .sign(ca.key, hashes.SHA256())
    ), key


@pytest.mark.parametrize(
    "san",
    [x509.DNSName("example.com"), x509.DNSName("docker.io.example.com"),
     x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
    ids=["outside", "lookalike", "ip"],
)  # fmt: skip
def test_leaves_outside_the_constraints_are_rejected_by_openssl_and_python(
    tmp_path: Path, san: x509.GeneralName
) -> None:
    ca = new_ca(tmp_path)
    (tmp_path / "ca.pem").write_bytes(to_pem([ca.cert]))
    leaf, key = _leaf_for(ca, san)
    (tmp_path / "leaf.pem").write_bytes(to_pem([leaf]))
    out = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / "leaf.pem")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode != 0 and "subtree violation" in out.stdout + out.stderr
    # Control: the same CA's leaf for a permitted name verifies.
    good, _ = _leaf_for(ca, x509.DNSName("registry-1.docker.io"))
    (tmp_path / "good.pem").write_bytes(to_pem([good]))
    ok = subprocess.run(
        ["openssl", "verify", "-CAfile", str(tmp_path / "ca.pem"), str(tmp_path / "good.pem")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stdout + ok.stderr
    with _PythonServer(leaf, key) as port, pytest.raises(ssl.SSLCertVerificationError):
        ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        ctx.check_hostname = False  # the chain check alone must fail
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            ctx.wrap_socket(s, server_hostname="example.com").close()


class _PythonServer:
    """A one-shot blocking TLS server presenting `leaf`."""

    def __init__(self, leaf: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        load_chain(self.ctx, to_pem([leaf]), pem)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        try:
            self.ctx.wrap_socket(conn, server_side=True).close()
        except (ssl.SSLError, OSError):
            conn.close()

    def __enter__(self) -> int:
        self.thread.start()
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.thread.join(5)
        self.sock.close()


def test_unconstrained_ca_when_turned_off(tmp_path: Path) -> None:
    ca = new_ca(tmp_path, domains=None)
    assert ca.permitted_domains() is None


def test_interrupted_rotation_is_completed_on_load(tmp_path: Path) -> None:
    new_ca(tmp_path)
    rotated = rotate_ca(
        tmp_path, permitted_domains=("docker.io",), lifetime=YEAR, overlap=YEAR, now=NOW
    )
    folder = tmp_path / "ca"
    # Simulate a crash after the new key was written but before ca.crt was replaced.
    (folder / "ca.crt").rename(folder / "ca.crt.new")
    (folder / "ca.crt").write_bytes(to_pem([rotated.previous]))  # type: ignore[list-item]
    loaded = load_ca(tmp_path)
    assert (
        loaded is not None and loaded.cert == rotated.cert and not (folder / "ca.crt.new").exists()
    )


@pytest.fixture
def stopped(tmp_path: Path) -> Iterator[Regcache]:
    rc = write_config(tmp_path, dns={"upstreams": [f"127.0.0.1:{free_port()}"]})
    yield rc
    rc.stop()


def _export(rc: Regcache, name: str) -> Path:
    path = rc.config_path.parent / name
    rc.cli("ca", "export", "--out", str(path))
    return path


def test_rotation_keeps_clients_of_either_ca_working_during_the_overlap(stopped: Regcache) -> None:
    rc = stopped
    rc.cli("ca", "init")
    old = _export(rc, "old.pem")
    out = rc.cli("ca", "rotate", "--overlap-days", "30")
    assert "keep working until" in out.stdout
    assert not (rc.state_dir / "ca" / "previous.key").exists()
    bundle = _export(rc, "bundle.pem")
    assert bundle.read_text().count("BEGIN CERTIFICATE") == 2  # new + old root
    new_only = rc.config_path.parent / "new.pem"
    new_only.write_bytes(
        bundle.read_bytes().split(b"-----END CERTIFICATE-----\n")[0]
        + b"-----END CERTIFICATE-----\n"
    )
    assert new_only.read_bytes() != old.read_bytes()
    with running(rc):
        for trust in (old, new_only, bundle):
            python_handshake(rc.https_port, "ghcr.io", trust)
            res = s_client(
                rc.https_port, trust, "-servername", "ghcr.io", "-verify_hostname", "ghcr.io"
            )
            assert res.returncode == 0, (trust.name, res.stderr)


def test_rotation_without_overlap_cuts_off_the_old_ca(stopped: Regcache) -> None:
    rc = stopped
    rc.cli("ca", "init")
    old = _export(rc, "old.pem")
    rc.cli("ca", "rotate", "--overlap-days", "0")
    with running(rc):
        with pytest.raises(ssl.SSLCertVerificationError):
            python_handshake(rc.https_port, "ghcr.io", old)
        python_handshake(rc.https_port, "ghcr.io", _export(rc, "new.pem"))


def test_hosts_outside_the_ca_constraints_stop_serve_and_check_config(stopped: Regcache) -> None:
    rc = stopped
    rc.cli("ca", "init")
    config = yaml.safe_load(rc.config_path.read_text())
    config["registries"].append({"name": "corp", "hosts": ["registry.corp.example"]})
    config["tls"]["permitted_domains"].append("corp.example")
    rc.config_path.write_text(yaml.safe_dump(config))
    check = rc.cli("check-config", check=False)
    assert check.returncode == 1
    assert "registry.corp.example" in check.stderr and "regcache ca rotate" in check.stderr
    serve = rc.cli("serve", check=False)
    assert serve.returncode == 1 and "outside the CA's name constraints" in serve.stderr
    rc.cli("ca", "rotate")
    assert rc.cli("check-config").returncode == 0


def test_show_warns_when_the_ca_is_about_to_expire(stopped: Regcache) -> None:
    rc = stopped
    config = yaml.safe_load(rc.config_path.read_text())
    config["tls"]["ca_lifetime_days"] = 30
    rc.config_path.write_text(yaml.safe_dump(config))
    rc.cli("ca", "init")
    shown = rc.cli("ca", "show").stdout
    assert "constraints:  DNS names under docker.io" in shown
    assert "warning: the regcache CA expires on" in shown and "ca rotate" in shown
    assert "expires on" in rc.cli("check-config").stderr
