"""`regcache ca init|show|export|rotate`: the CA clients trust, made, shown, handed out and
replaced with an overlap."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

from cryptography import x509

from appliance.config.model import Config
from appliance.config.registries import Registries
from appliance.runtime.ca_policy import ca_constraints
from appliance.tls.ca import (
    CaError,
    create_ca,
    expiry_warning,
    fingerprint,
    load_ca,
    rotate_ca,
    to_pem,
)


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
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


def run(args: argparse.Namespace, config: Config, _path: Path) -> int:
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
