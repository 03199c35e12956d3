"""TLS clients for the tests: Python ssl, openssl s_client and curl."""

from __future__ import annotations

import socket
import ssl
import subprocess
from pathlib import Path


def python_handshake(port: int, sni: str | None, cafile: Path) -> tuple[bytes, str | None]:
    """Handshake verifying against `cafile`; returns the leaf (DER) and the ALPN protocol."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    if sni is None:
        ctx.check_hostname = False
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as sock,
        ctx.wrap_socket(sock, server_hostname=sni) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return der, tls.selected_alpn_protocol()


def s_client(port: int, cafile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(cafile),
         "-verify_return_error", *args],
        input="", capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def curl(port: int, host: str, cafile: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", "--cacert", str(cafile), "--resolve",
         f"{host}:{port}:127.0.0.1", f"https://{host}:{port}/v2/"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
