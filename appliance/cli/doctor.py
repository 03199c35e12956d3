"""`regcache doctor`: is this host's path to the registries really through regcache?

One line per check, PASS or FAIL, and for each failure the fix. Runs on a build host
(`--gateway ADDR`) or on the gateway itself (with its config). Checks, per registry host:
its name resolves to the gateway; the certificate regcache presents verifies with the
CAs this host trusts (the system store, and the docker/podman per-registry directories
where those tools are configured); `/v2/` answers as a registry through regcache; and,
on the gateway, that the real upstream is reachable from it.
"""

from __future__ import annotations

import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOSTS = (
    "registry-1.docker.io", "ghcr.io", "quay.io", "gcr.io", "registry.k8s.io",
    "public.ecr.aws", "mcr.microsoft.com",
)  # fmt: skip
CERT_DIRS = (Path("/etc/docker/certs.d"), Path("/etc/containers/certs.d"))
TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class Result:
    check: str
    ok: bool
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{'PASS' if self.ok else 'FAIL'}  {self.check}: {self.detail}"
        return text if self.ok else f"{text}\n      fix: {self.fix}"


def resolves_to(host: str, gateway: str) -> Result:
    check = f"dns {host}"
    try:
        infos = socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)
    except OSError as e:
        return Result(check, False, f"does not resolve ({e})", _DNS_FIX.format(gateway=gateway))
    addresses = sorted({str(info[4][0]) for info in infos})
    if gateway in addresses:
        return Result(check, True, f"→ {gateway}")
    return Result(
        check, False, f"→ {', '.join(addresses)}, not the gateway {gateway}",
        _DNS_FIX.format(gateway=gateway),
    )  # fmt: skip


_DNS_FIX = (
    "point this host's resolver at {gateway}: `nameserver {gateway}` in /etc/resolv.conf, "
    "or DNS={gateway} in a systemd-resolved drop-in (the regcache_client role does this)"
)


def tls_verifies(host: str, gateway: str, port: int, cafile: Path | None, label: str) -> Result:
    """The chain regcache presents for `host` verifies against `cafile` (None: the
    system store)."""
    check = f"tls {host} ({label})"
    context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    try:
        with (
            socket.create_connection((gateway, port), timeout=TIMEOUT_S) as sock,
            context.wrap_socket(sock, server_hostname=host) as tls,
        ):
            issuer = dict(x[0] for x in tls.getpeercert()["issuer"])  # type: ignore[index, misc]
    except ssl.SSLCertVerificationError as e:
        return Result(check, False, e.verify_message or str(e), _ca_fix(host, label))
    except OSError as e:
        return Result(check, False, f"cannot connect to {gateway}:{port}: {e}",
                      "start regcache on the gateway (`systemctl status regcache`)")  # fmt: skip
    return Result(check, True, f"issued by {issuer.get('commonName', '?')}")


def _ca_fix(host: str, label: str) -> str:
    if label == "system":
        return (
            "install the regcache CA (`regcache ca export` on the gateway) into "
            "/usr/local/share/ca-certificates/regcache.crt and run update-ca-certificates "
            "(RHEL: /etc/pki/ca-trust/source/anchors, update-ca-trust)"
        )
    return f"copy the regcache CA to {label}/{host}/ca.crt"


def registry_answers(host: str, port: int, cafile: Path | None) -> Result:
    """`/v2/` through whatever `host` resolves to: a registry says 200 or 401 with its
    API version header."""
    check = f"api {host}"
    url = f"https://{host}{'' if port == 443 else f':{port}'}/v2/"
    context = ssl.create_default_context(cafile=str(cafile) if cafile else None)
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S, context=context) as reply:
            status, headers = reply.status, reply.headers
    except urllib.error.HTTPError as e:
        status, headers = e.code, e.headers
    except (OSError, ssl.SSLError) as e:
        return Result(check, False, f"{url}: {e}", "fix the dns and tls checks above first")
    version = headers.get("Docker-Distribution-API-Version", "")
    if status in (200, 401) and version.startswith("registry/2"):
        return Result(check, True, f"{url} → {status} ({version})")
    return Result(
        check, False, f"{url} → {status}, not a registry answer",
        "see regcache's log on the gateway (`journalctl -u regcache`)",
    )  # fmt: skip


def run_checks(
    hosts: Iterable[str],
    gateway: str,
    port: int = 443,
    cafile: Path | None = None,
    cert_dirs: Iterable[Path] = CERT_DIRS,
    upstream: Callable[[str], Result] | None = None,
) -> list[Result]:
    results: list[Result] = []
    for host in hosts:
        results.append(resolves_to(host, gateway))
        results.append(
            tls_verifies(host, gateway, port, cafile, "given CA" if cafile else "system")
        )
        for folder in cert_dirs:
            if folder.is_dir():  # docker or podman is configured on this host
                ca = folder / host / "ca.crt"
                if ca.is_file():
                    results.append(tls_verifies(host, gateway, port, ca, str(folder)))
                else:
                    results.append(Result(f"tls {host} ({folder})", False, f"{ca} is missing",
                                          _ca_fix(host, str(folder))))  # fmt: skip
        results.append(registry_answers(host, port, cafile))
        if upstream is not None:
            results.append(upstream(host))
    return results
