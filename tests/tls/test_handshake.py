"""TLS handshakes against a running regcache, verified against its exported CA."""

from __future__ import annotations

import datetime as dt
import json
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from appliance.config.model import load_config
from appliance.config.registries import Registries
from tests.harness import Regcache
from tests.tls.clients import curl, python_handshake, s_client

# Every exact host of the example config, and a name under each wildcard.
HOSTS = [
    "registry-1.docker.io", "index.docker.io", "auth.docker.io", "ghcr.io", "quay.io",
    "gcr.io", "eu.gcr.io", "us-docker.pkg.dev", "registry.k8s.io", "public.ecr.aws",
    "mcr.microsoft.com",
]  # fmt: skip


def test_hosts_cover_the_example_config() -> None:
    config = load_config(Path(__file__).parents[2] / "config.example.yaml")
    intercepted = Registries.of(config).intercepted
    assert all(intercepted.match(h) for h in HOSTS)
    assert set(intercepted.exact) <= set(HOSTS)


@pytest.mark.parametrize("host", HOSTS)
def test_configured_host_verifies_with_python_openssl_and_curl(
    regcache: Regcache, ca_pem: Path, host: str
) -> None:
    der, alpn = python_handshake(regcache.https_port, host, ca_pem)
    assert alpn == "http/1.1"
    leaf = x509.load_der_x509_certificate(der)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == [host]
    out = s_client(regcache.https_port, ca_pem, "-servername", host, "-verify_hostname", host)
    assert out.returncode == 0 and "Verify return code: 0 (ok)" in out.stdout, out.stderr
    got = curl(regcache.https_port, host, ca_pem)
    # TLS verified and HTTP answered (upstream is unreachable here: regcache answers the
    # ping of registry hosts and the token step of token-realm hosts itself).
    assert got.returncode == 0 and isinstance(json.loads(got.stdout), dict), got.stderr


def test_leaf_is_san_only_serverauth_short_lived_and_not_a_ca(
    regcache: Regcache, ca_pem: Path
) -> None:
    der, _ = python_handshake(regcache.https_port, "Quay.IO", ca_pem)
    leaf = x509.load_der_x509_certificate(der)
    assert leaf.subject == x509.Name([])
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical and san.value.get_values_for_type(x509.DNSName) == ["quay.io"]
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert leaf.serial_number.bit_length() >= 64
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert lifetime <= dt.timedelta(days=90)
    assert leaf.not_valid_before_utc < dt.datetime.now(dt.UTC) - dt.timedelta(minutes=30)
    ca = x509.load_pem_x509_certificate(ca_pem.read_bytes())
    assert leaf.public_key() != ca.public_key()


@pytest.mark.parametrize(
    ("sni", "label"),
    [("example.com", "unknown"), ("docker.io.evil.example", "lookalike"), ("127.0.0.1", "ip")],
)
def test_unlisted_or_ip_sni_is_refused_and_mints_nothing(
    regcache: Regcache, ca_pem: Path, sni: str, label: str
) -> None:
    out = s_client(regcache.https_port, ca_pem, "-servername", sni)
    assert out.returncode != 0
    assert "unrecognized name" in out.stderr or "alert number 112" in out.stderr, out.stderr
    log = regcache.log()
    assert f"tls refused sni='{sni}' reason=not-intercepted" in log
    assert f"tls minted sni={sni}" not in log


def test_missing_sni_is_refused(regcache: Regcache, ca_pem: Path) -> None:
    out = s_client(regcache.https_port, ca_pem, "-noservername")
    assert out.returncode != 0 and "unrecognized name" in out.stderr, out.stderr
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME"):
        python_handshake(regcache.https_port, None, ca_pem)
    assert "tls refused sni=None" in regcache.log()


def test_one_mint_per_name_whatever_its_spelling(regcache: Regcache, ca_pem: Path) -> None:
    for spelling in ("gcr.io", "GCR.io", "gcr.io."):
        out = s_client(regcache.https_port, ca_pem, "-servername", spelling)
        assert out.returncode == 0, out.stderr
    assert regcache.log().count("tls minted sni=gcr.io ") == 1


def test_ca_key_and_directory_modes(regcache: Regcache) -> None:
    folder = regcache.state_dir / "ca"
    assert folder.stat().st_mode & 0o777 == 0o700
    assert (folder / "ca.key").stat().st_mode & 0o777 == 0o600
    assert "PRIVATE KEY" not in regcache.log()
