"""Leaf certificates minted on SNI for allow-listed names, and the server SSLContext.

One EC P-256 leaf key per process, separate from the CA key; leaves are SAN-only,
serverAuth, short-lived and re-minted a third of their lifetime before expiry. Unknown,
missing or IP-literal SNI gets no context and mints nothing (the listener then sends
`unrecognized_name`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from appliance.config.hostnames import HostSet, is_ip_literal, normalise
from appliance.kit.bounded import BoundedMap
from appliance.kit.singleflight import SingleFlight
from appliance.tls.ca import CertificateAuthority, to_pem

log = logging.getLogger(__name__)

BACKDATE = dt.timedelta(hours=1)
ALPN = ["http/1.1"]


def mint_leaf(
    ca: CertificateAuthority,
    name: str,
    public_key: ec.EllipticCurvePublicKey,
    lifetime: dt.timedelta,
    now: dt.datetime,
) -> x509.Certificate:
    """Sign a serverAuth leaf for exactly `name`; no allow-list check here (see LeafStore)."""
    not_after = min(now + lifetime, ca.cert.not_valid_after_utc)
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))  # SAN-only (RFC 5280 4.2.1.6: SAN is then critical)
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=True)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca.key, hashes.SHA256())
    )


def _base_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(ALPN)
    return ctx


@dataclass(slots=True)
class _Entry:
    context: ssl.SSLContext
    renew_after: float
    """Monotonic-clock-free wall time (epoch seconds) after which the leaf is re-minted."""


class LeafStore:
    """Per-name SSLContexts, minted on first use; one entry per normalised name. Used
    from one event loop (the listener's front door)."""

    def __init__(
        self,
        ca: CertificateAuthority,
        allowed: HostSet,
        lifetime: dt.timedelta,
        clock: Callable[[], float] = time.time,
        max_entries: int = 4096,
    ) -> None:
        self._ca = ca
        self._allowed = allowed
        self._lifetime = lifetime
        self._clock = clock
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._key_pem = self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # Wildcard patterns (`*.pkg.dev`) admit unboundedly many names: keep an LRU.
        self._entries: BoundedMap[str, _Entry] = BoundedMap(max_entries)
        self._minting: SingleFlight[_Entry] = SingleFlight()
        self.mint_count = 0

    @property
    def minted_names(self) -> frozenset[str]:
        return frozenset(self._entries)

    async def context(self, server_name: str | None) -> ssl.SSLContext | None:
        """The leaf context for an allowed name, else None. A new leaf is minted in a
        worker thread (key signing must not stall the connections the loop carries), and
        callers that ask for the same new name meanwhile share that one mint."""
        name = self._served(server_name)
        if name is None:
            return None
        entry = self._fresh(name)
        if entry is None and name in self._minting:
            entry = await self._minting.join(name)
        if entry is None:
            minted = await self._minting.lead(
                name, lambda: asyncio.to_thread(self._mint, name), share=lambda e: e
            )
            entry = self._store(name, minted)
        return entry.context

    def _served(self, server_name: str | None) -> str | None:
        """The normalised name if a leaf may be minted for it."""
        if not server_name or is_ip_literal(server_name):
            return None
        if not self._allowed.match(server_name):
            return None
        return normalise(server_name)

    def _fresh(self, name: str) -> _Entry | None:
        entry = self._entries.use(name)
        return None if entry is None or self._clock() >= entry.renew_after else entry

    def _store(self, name: str, entry: _Entry) -> _Entry:
        self._entries.set(name, entry)
        self.mint_count += 1
        return entry

    def _mint(self, name: str) -> _Entry:
        """Sign a leaf for `name` (thread-safe: reads only what never changes)."""
        started = time.perf_counter()
        now = dt.datetime.fromtimestamp(self._clock(), dt.UTC)
        leaf = mint_leaf(self._ca, name, self._key.public_key(), self._lifetime, now)
        ctx = _base_context()
        load_chain(ctx, to_pem([leaf, *self._ca.chain(now)]), self._key_pem)
        lifetime_s = (leaf.not_valid_after_utc - now).total_seconds()
        log.info(
            "tls minted sni=%s serial=%x not_after=%s ms=%.2f",
            name,
            leaf.serial_number,
            leaf.not_valid_after_utc.isoformat(),
            (time.perf_counter() - started) * 1000,
        )
        return _Entry(ctx, self._clock() + lifetime_s * 2 / 3)


def load_chain(ctx: ssl.SSLContext, chain_pem: bytes, key_pem: bytes) -> None:
    """`load_cert_chain` from memory via memfd: the leaf key never touches the disk."""
    fds = [os.memfd_create("regcache-chain"), os.memfd_create("regcache-key")]
    try:
        for fd, data in zip(fds, (chain_pem, key_pem), strict=True):
            os.write(fd, data)
        ctx.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
    finally:
        for fd in fds:
            os.close(fd)
