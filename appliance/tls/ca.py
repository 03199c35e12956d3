"""The regcache certificate authority: creation, loading, rotation and export.

Layout of `<state_dir>/ca/` (0700): `ca.key` (0600, the only private key on disk),
`ca.crt`, and after a rotation `previous.crt` (the old root) and `cross.crt` (the new
CA's key and name signed by the old CA) until the overlap window ends. Serving
`cross.crt` after each leaf keeps clients that trust only the old root working.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import logging
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance.kit.durable import fsync_dir

log = logging.getLogger(__name__)

EXPIRY_WARNING = dt.timedelta(days=60)
_EXCLUDED_IPS = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))


class CaError(RuntimeError):
    """The CA is missing, unreadable or unfit for the configured hosts."""


@dataclass(frozen=True, slots=True)
class CertificateAuthority:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    cross: x509.Certificate | None = None
    """This CA's key and subject signed by the previous CA, during a rotation overlap."""
    previous: x509.Certificate | None = None

    def permitted_domains(self) -> tuple[str, ...] | None:
        """The permitted DNS subtrees, or None when the CA is unconstrained."""
        try:
            ext = self.cert.extensions.get_extension_for_class(x509.NameConstraints)
        except x509.ExtensionNotFound:
            return None
        subtrees = ext.value.permitted_subtrees or []
        return tuple(str(n.value) for n in subtrees if isinstance(n, x509.DNSName))

    def overlap_active(self, now: dt.datetime) -> bool:
        return self.cross is not None and now < self.cross.not_valid_after_utc

    def chain(self, now: dt.datetime) -> list[x509.Certificate]:
        """Certificates to send after a leaf: the cross-signed CA during an overlap."""
        return [self.cross] if self.cross is not None and self.overlap_active(now) else []

    def trust_bundle(self, now: dt.datetime) -> list[x509.Certificate]:
        """Roots a client should trust: this CA, plus the previous one during an overlap."""
        if self.previous is not None and self.overlap_active(now):
            return [self.cert, self.previous]
        return [self.cert]


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def to_pem(certs: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def expiry_warning(ca: CertificateAuthority, now: dt.datetime) -> str | None:
    left = ca.cert.not_valid_after_utc - now
    if left > EXPIRY_WARNING:
        return None
    return (
        f"the regcache CA expires on {ca.cert.not_valid_after_utc:%Y-%m-%d} "
        f"({max(left.days, 0)} days left): run `regcache ca rotate` and redistribute the CA"
    )


def ca_dir(state_dir: Path) -> Path:
    return state_dir / "ca"


def load_ca(state_dir: Path) -> CertificateAuthority | None:
    """The CA of this install, or None before `ca init`; CaError when it is damaged."""
    folder = ca_dir(state_dir)
    key_path, cert_path = folder / "ca.key", folder / "ca.crt"
    if not key_path.exists() and not cert_path.exists():
        return None
    try:
        _finish_rotation(folder)
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        cross = _optional_cert(folder / "cross.crt")
        previous = _optional_cert(folder / "previous.crt")
    except (OSError, ValueError) as e:
        raise CaError(f"cannot load the CA from {folder}: {e}") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CaError(f"{key_path} is not an EC private key")
    if key.public_key() != cert.public_key():
        raise CaError(f"{key_path} does not belong to {cert_path}")
    return CertificateAuthority(key, cert, cross, previous)


def _finish_rotation(folder: Path) -> None:
    """Complete or undo a rotation interrupted between writing the new key and cert."""
    pending = folder / "ca.crt.new"
    if not pending.exists():
        return
    key = serialization.load_pem_private_key((folder / "ca.key").read_bytes(), password=None)
    if x509.load_pem_x509_certificate(pending.read_bytes()).public_key() == key.public_key():
        os.replace(pending, folder / "ca.crt")
    else:
        pending.unlink()


def _optional_cert(path: Path) -> x509.Certificate | None:
    return x509.load_pem_x509_certificate(path.read_bytes()) if path.exists() else None


def create_ca(
    state_dir: Path,
    *,
    permitted_domains: tuple[str, ...] | None,
    lifetime: dt.timedelta,
    now: dt.datetime,
) -> CertificateAuthority:
    """Create a new CA; `permitted_domains=None` means no name constraints."""
    if load_ca(state_dir) is not None:
        raise CaError(f"a CA already exists in {ca_dir(state_dir)}")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _self_signed(key, permitted_domains, lifetime, now)
    with _private_dir(ca_dir(state_dir)) as folder:
        _write(folder / "ca.key", _key_pem(key))
        _write(folder / "ca.crt", to_pem([cert]))
    log.info("ca created fingerprint=%s", fingerprint(cert))
    return CertificateAuthority(key, cert)


def rotate_ca(
    state_dir: Path,
    *,
    permitted_domains: tuple[str, ...] | None,
    lifetime: dt.timedelta,
    overlap: dt.timedelta,
    now: dt.datetime,
) -> CertificateAuthority:
    """Replace the CA; the old key signs the new CA once (`cross.crt`) and is then deleted."""
    old = load_ca(state_dir)
    if old is None:
        raise CaError("there is no CA to rotate: run `regcache ca init` first")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _self_signed(key, permitted_domains, lifetime, now)
    cross_until = min(now + overlap, old.cert.not_valid_after_utc)
    cross = _builder_like(cert, now, cross_until).issuer_name(old.cert.subject)
    cross = cross.add_extension(_aki(old.cert), critical=False)
    cross_cert = cross.sign(old.key, hashes.SHA256())
    with _private_dir(ca_dir(state_dir)) as folder:
        _write(folder / "previous.crt", to_pem([old.cert]))
        _write(folder / "cross.crt", to_pem([cross_cert]))
        # The key is the commit point: until it is replaced, the old CA stays whole.
        _write(folder / "ca.crt.new", to_pem([cert]))
        _write(folder / "ca.key", _key_pem(key))
        os.replace(folder / "ca.crt.new", folder / "ca.crt")
        fsync_dir(folder)
    log.info(
        "ca rotated fingerprint=%s previous=%s overlap_until=%s",
        fingerprint(cert),
        fingerprint(old.cert),
        cross_until.isoformat(),
    )
    return CertificateAuthority(key, cert, cross_cert, old.cert)


def _self_signed(
    key: ec.EllipticCurvePrivateKey,
    permitted_domains: tuple[str, ...] | None,
    lifetime: dt.timedelta,
    now: dt.datetime,
) -> x509.Certificate:
    install_id = secrets.token_hex(4)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "regcache"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"regcache CA {install_id}"),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + lifetime)
        # path_length=1 leaves room for exactly one intermediate: the cross certificate
        # that `rotate_ca` signs with this key. Name constraints bind the whole chain.
        .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if permitted_domains is not None:
        constraints = x509.NameConstraints(
            permitted_subtrees=[x509.DNSName(d) for d in permitted_domains],
            excluded_subtrees=[x509.IPAddress(n) for n in _EXCLUDED_IPS],
        )
        builder = builder.add_extension(constraints, critical=True)
    return builder.sign(key, hashes.SHA256())


def _builder_like(
    cert: x509.Certificate, not_before: dt.datetime, not_after: dt.datetime
) -> x509.CertificateBuilder:
    """A builder with `cert`'s subject, key and CA extensions (authority key id aside)."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .public_key(cert.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before - dt.timedelta(hours=1))
        .not_valid_after(not_after)
    )
    for ext in cert.extensions:
        if not isinstance(ext.value, x509.AuthorityKeyIdentifier):
            builder = builder.add_extension(ext.value, critical=ext.critical)
    return builder


def _aki(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@contextlib.contextmanager
def _private_dir(folder: Path) -> Iterator[Path]:
    """Create/tighten `folder` to 0700 and run the block under umask 077."""
    old = os.umask(0o077)
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        folder.chmod(0o700)
        yield folder
    finally:
        os.umask(old)


def _write(path: Path, data: bytes) -> None:
    """Write atomically with mode 0600: temp file, fsync, rename, directory fsync."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
