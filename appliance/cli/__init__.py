"""The `regcache` command: serve, check-config, CA and store management. Thin by design."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from cryptography import x509

from appliance.cache.ports import UpstreamUnavailable
from appliance.cli import cache as cli_cache
from appliance.cli import doctor
from appliance.config.model import (
    Config,
    ConfigError,
    StartupError,
    default_config_path,
    load_config,
)
from appliance.config.registries import Registries
from appliance.kit import redact
from appliance.main import serve
from appliance.runtime.ca_policy import ca_constraints, ca_mismatch, constraints_warning
from appliance.runtime.offline import offline_flag
from appliance.runtime.outbound import upstream_client, upstream_resolver
from appliance.tls.ca import (
    CaError,
    create_ca,
    expiry_warning,
    fingerprint,
    load_ca,
    rotate_ca,
    to_pem,
)


def _parser() -> argparse.ArgumentParser:
    # --config is accepted before or after the subcommand.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=argparse.SUPPRESS,
        help=f"config file (default: $REGCACHE_CONFIG or {default_config_path()})",
    )
    parser = argparse.ArgumentParser(prog="regcache", description=__doc__, parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", parents=[common], help="run the DNS responder and the HTTPS proxy")
    check = sub.add_parser(
        "check-config", parents=[common], help="validate a config file and the CA against it"
    )
    check.add_argument("path", nargs="?", type=Path)
    ca = sub.add_parser("ca", parents=[common], help="manage the regcache CA").add_subparsers(
        dest="ca_command", required=True
    )
    ca.add_parser("init", parents=[common], help="create the CA (serve does this on first start)")
    export = ca.add_parser(
        "export", parents=[common], help="write the CA certificate(s) clients must trust"
    )
    export.add_argument("--out", type=Path, help="file to write (default: stdout)")
    ca.add_parser("show", parents=[common], help="subject, fingerprint, constraints and expiry")
    rotate = ca.add_parser(
        "rotate", parents=[common], help="new CA; the old one keeps working for an overlap"
    )
    rotate.add_argument("--overlap-days", type=int, help="default: tls.rotate_overlap_days")
    offline = sub.add_parser(
        "offline", parents=[common], help="stop or resume contacting upstream at run time"
    )
    offline.add_argument("state", choices=["on", "off"])
    cli_cache.add_parser(sub, common)
    cli_cache.add_audit_parser(sub, common)
    status = sub.add_parser(
        "status", parents=[common], help="is it working, and how much is it saving"
    )
    status.add_argument("--json", action="store_true")
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
    return parser


Command = Callable[[argparse.Namespace, Config, Path], int]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    path = getattr(args, "path", None) or getattr(args, "config", None) or default_config_path()
    if args.command == "doctor" and not Path(path).exists():
        return _doctor(args, None)  # a build host: no config, --gateway says where to look
    try:
        config = load_config(path)
    except ConfigError as e:
        print(f"regcache: config error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=config.log_level,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
    for handler in logging.getLogger().handlers:
        redact.install(handler)
    try:
        return _COMMANDS[args.command](args, config, Path(path))
    except (CaError, StartupError, OSError) as e:
        print(f"regcache: {e}", file=sys.stderr)
        return 1


def _offline(args: argparse.Namespace, config: Config, _path: Path) -> int:
    flag = offline_flag(config)
    if args.state == "on":
        flag.touch()
    else:
        flag.unlink(missing_ok=True)
    print(f"offline {args.state} (a running regcache notices within a second)")
    return 0


def _doctor(args: argparse.Namespace, config: Config | None) -> int:
    gateway = args.gateway or (str(config.appliance.ipv4) if config else None)
    if gateway is None:
        print("regcache: doctor needs --gateway ADDR on a host without regcache's config",
              file=sys.stderr)  # fmt: skip
        return 2
    hosts = args.host or (
        list(Registries.of(config).api_names) if config else list(doctor.DEFAULT_HOSTS)
    )
    upstream = None
    if config is not None and config.state_dir.exists():  # the gateway: check its way out
        reached = asyncio.run(_reach_upstream(config, hosts))
        upstream = reached.__getitem__
    cert_dirs = args.cert_dir or doctor.CERT_DIRS
    results = doctor.run_checks(hosts, gateway, args.port, args.ca, cert_dirs, upstream)
    for result in results:
        print(result.line())
    failed = sum(not r.ok for r in results)
    print(f"{len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


async def _reach_upstream(config: Config, hosts: list[str]) -> dict[str, doctor.Result]:
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
                results[host] = doctor.Result(check, False, str(e), fix)
                continue
            reply.close()
            results[host] = doctor.Result(
                check, True, f"reachable from the gateway ({reply.status})"
            )
    finally:
        await client.close()
    return results


def _check_config(_args: argparse.Namespace, config: Config, path: Path) -> int:
    now = dt.datetime.now(dt.UTC)
    registries = Registries.of(config)
    ca = load_ca(config.state_dir)
    if ca is not None:
        problem = ca_mismatch(registries, ca)
        if problem:
            print(f"regcache: {path}: {problem}", file=sys.stderr)
            return 1
        for warning in (expiry_warning(ca, now), constraints_warning(ca)):
            if warning:
                print(f"regcache: warning: {warning}", file=sys.stderr)
    hosts = registries.intercepted.patterns()
    print(f"{path}: ok ({len(config.registries)} registries, {len(hosts)} intercepted names)")
    return 0


def _ca(args: argparse.Namespace, config: Config, _path: Path) -> int:
    now = dt.datetime.now(dt.UTC)
    permitted = ca_constraints(config, Registries.of(config))
    lifetime = dt.timedelta(days=config.tls.ca_lifetime_days)
    if args.ca_command == "init":
        existing = load_ca(config.state_dir)
        if existing is not None:
            print(f"CA already exists, fingerprint SHA256 {fingerprint(existing.cert)}")
            return 0
        created = create_ca(
            config.state_dir, permitted_domains=permitted, lifetime=lifetime, now=now
        )
        print(f"CA created, fingerprint SHA256 {fingerprint(created.cert)}")
        return 0
    if args.ca_command == "rotate":
        days = config.tls.rotate_overlap_days if args.overlap_days is None else args.overlap_days
        rotated = rotate_ca(
            config.state_dir,
            permitted_domains=permitted,
            lifetime=lifetime,
            overlap=dt.timedelta(days=days),
            now=now,
        )
        assert rotated.cross is not None
        print(f"CA rotated, new fingerprint SHA256 {fingerprint(rotated.cert)}")
        until = rotated.cross.not_valid_after_utc
        print(f"clients trusting the old CA keep working until {until:%Y-%m-%d %H:%M} UTC")
        print("restart regcache, then distribute the new CA (`regcache ca export`)")
        return 0
    ca = load_ca(config.state_dir)
    if ca is None:
        raise CaError(f"no CA in {config.state_dir}: run `regcache ca init` or start regcache")
    if args.ca_command == "export":
        bundle = ca.trust_bundle(now)
        if args.out:
            args.out.write_bytes(to_pem(bundle))
        else:
            sys.stdout.buffer.write(to_pem(bundle))
        for cert in bundle:
            print(f"SHA256 fingerprint {fingerprint(cert)}  {_cn(cert)}", file=sys.stderr)
        return 0
    _show(ca.cert, ca.permitted_domains())
    if ca.cross is not None and ca.overlap_active(now):
        print(f"rotation overlap until: {ca.cross.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    warning = expiry_warning(ca, now)
    if warning:
        print(f"warning: {warning}")
    return 0


def _cn(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string()


def _show(cert: x509.Certificate, permitted: tuple[str, ...] | None) -> None:
    print(f"subject:      {_cn(cert)}")
    print(f"fingerprint:  SHA256 {fingerprint(cert)}")
    print(
        f"valid:        {cert.not_valid_before_utc:%Y-%m-%d} .. {cert.not_valid_after_utc:%Y-%m-%d}"
    )
    if permitted is None:
        print("constraints:  NONE (this CA can vouch for any site: see THREAT_MODEL.md)")
    else:
        print(f"constraints:  DNS names under {', '.join(permitted)}; no IP addresses")


_COMMANDS: dict[str, Command] = {
    "serve": lambda _args, config, path: serve(config, path),
    "check-config": _check_config,
    "cache": lambda args, config, _path: cli_cache.run(args, config),
    "audit": lambda args, config, _path: cli_cache.run_audit(args, config),
    "status": lambda args, config, _path: cli_cache.run_status(args, config),
    "doctor": lambda args, config, _path: _doctor(args, config),
    "offline": _offline,
    "ca": _ca,
}


if __name__ == "__main__":
    sys.exit(main())
