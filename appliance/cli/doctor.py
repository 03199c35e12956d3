"""`regcache doctor`: is this host's path to the registries really through regcache?

One line per check, PASS or FAIL, and for each failure the fix. Runs on a build host
(`--gateway ADDR`) or on the gateway itself (with its config). Checks, per registry host:
its name resolves to the gateway; the certificate regcache presents verifies with the
CAs this host trusts (the system store, and the docker/podman per-registry directories
where those tools are configured); `/v2/` answers as a registry through regcache; and,
on the gateway, that the real upstream is reachable from it.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import ssl
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from appliance.cache.ports import UpstreamUnavailable
from appliance.config.model import Config
from appliance.config.registries import Registries
from appliance.kit.findings import Finding
from appliance.runtime.outbound import upstream_client, upstream_resolver
from appliance.runtime.peering import examine_peers
from appliance.runtime.sharing import examine

DEFAULT_HOSTS = (
    "registry-1.docker.io", "ghcr.io", "quay.io", "gcr.io", "registry.k8s.io",
    "public.ecr.aws", "mcr.microsoft.com",
)  # fmt: skip
CERT_DIRS = (Path("/etc/docker/certs.d"), Path("/etc/containers/certs.d"))
TIMEOUT_S = 5.0


def resolves_to(host: str, gateway: str) -> Finding:
    check = f"dns {host}"
    try:
        infos = socket.getaddrinfo(host, 443, type=socket.SOCK_STREAM)
    except OSError as e:
        return Finding(check, False, f"does not resolve ({e})", _DNS_FIX.format(gateway=gateway))
    addresses = sorted({str(info[4][0]) for info in infos})
    if gateway in addresses:
        return Finding(check, True, f"→ {gateway}")
    return Finding(
        check, False, f"→ {', '.join(addresses)}, not the gateway {gateway}",
        _DNS_FIX.format(gateway=gateway),
    )  # fmt: skip


_DNS_FIX = (
    "point this host's resolver at {gateway}: `nameserver {gateway}` in /etc/resolv.conf, "
    "or DNS={gateway} in a systemd-resolved drop-in (the regcache_client role does this)"
)


def tls_verifies(host: str, gateway: str, port: int, cafile: Path | None, label: str) -> Finding:
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
        return Finding(check, False, e.verify_message or str(e), _ca_fix(host, label))
    except OSError as e:
        return Finding(check, False, f"cannot connect to {gateway}:{port}: {e}",
                      "start regcache on the gateway (`systemctl status regcache`)")  # fmt: skip
    return Finding(check, True, f"issued by {issuer.get('commonName', '?')}")


def _ca_fix(host: str, label: str) -> str:
    if label == "system":
        return (
            "install the regcache CA (`regcache ca export` on the gateway) into "
            "/usr/local/share/ca-certificates/regcache.crt and run update-ca-certificates "
            "(RHEL: /etc/pki/ca-trust/source/anchors, update-ca-trust)"
        )
    return f"copy the regcache CA to {label}/{host}/ca.crt"


def registry_answers(host: str, port: int, cafile: Path | None) -> Finding:
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
        return Finding(check, False, f"{url}: {e}", "fix the dns and tls checks above first")
    version = headers.get("Docker-Distribution-API-Version", "")
    if status in (200, 401) and version.startswith("registry/2"):
        return Finding(check, True, f"{url} → {status} ({version})")
    return Finding(
        check, False, f"{url} → {status}, not a registry answer",
        "see regcache's log on the gateway (`journalctl -u regcache`)",
    )  # fmt: skip


def run_checks(
    hosts: Iterable[str],
    gateway: str,
    port: int = 443,
    cafile: Path | None = None,
    cert_dirs: Iterable[Path] = CERT_DIRS,
    upstream: Callable[[str], Finding] | None = None,
) -> list[Finding]:
    results: list[Finding] = []
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
                    results.append(Finding(f"tls {host} ({folder})", False, f"{ca} is missing",
                                          _ca_fix(host, str(folder))))  # fmt: skip
        results.append(registry_answers(host, port, cafile))
        if upstream is not None:
            results.append(upstream(host))
    return results


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    doctor = sub.add_parser(
        "doctor", parents=[common], help="check this host's path to the registries via regcache"
    )
    doctor.add_argument("--gateway", help="regcache's address (default: appliance.ipv4)")
    doctor.add_argument("--port", type=int, default=443)
    doctor.add_argument("--ca", type=Path, help="verify with this CA instead of the system store")
    doctor.add_argument(
        "--host", action="append", help="registry host to check (default: the config's)"
    )
    doctor.add_argument(
        "--cert-dir",
        action="append",
        type=Path,
        help="per-registry CA directory to check (default: /etc/docker/certs.d and "
        "/etc/containers/certs.d, where present)",
    )


def run(args: argparse.Namespace, config: Config | None) -> int:
    gateway = args.gateway or (str(config.appliance.ipv4) if config else None)
    if gateway is None:
        print(
            "regcache: doctor needs --gateway ADDR on a host without regcache's config",
            file=sys.stderr,
        )
        return 2
    hosts = args.host or (list(Registries.of(config).api_names) if config else list(DEFAULT_HOSTS))
    upstream = None
    if config is not None and config.state_dir.exists():  # the gateway: check its way out
        reached = asyncio.run(_reach_upstream(config, hosts))
        upstream = reached.__getitem__
    cert_dirs = args.cert_dir or CERT_DIRS
    results = run_checks(hosts, gateway, args.port, args.ca, cert_dirs, upstream)
    if upstream is not None and config is not None:  # the gateway: its bucket and peers
        results += asyncio.run(examine(config)) + asyncio.run(examine_peers(config))
    for result in results:
        print(result.line())
    failed = sum(not r.ok for r in results)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


async def _reach_upstream(config: Config, hosts: list[str]) -> dict[str, Finding]:
    """Each host's real upstream `/v2/`, asked as regcache asks (its resolver, its CAs)."""
    client = upstream_client(config, Registries.of(config), upstream_resolver(config))
    results = {}
    try:
        for host in hosts:
            check = f"upstream {host}"
            try:
                reply = await client.send("GET", f"https://{host}/v2/", {}, None)
            except UpstreamUnavailable as e:
                fix = "check the gateway's route and firewall to the internet, dns.upstreams"
                results[host] = Finding(check, False, str(e), fix)
                continue
            reply.close()
            results[host] = Finding(check, True, f"reachable from the gateway ({reply.status})")
    finally:
        await client.close()
    return results
