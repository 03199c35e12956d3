"""`regcache serve`, `regcache check-config` and `regcache offline on|off`."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path
from typing import Any

from appliance.config.model import Config
from appliance.config.registries import Registries
from appliance.main import serve
from appliance.runtime.ca_policy import ca_mismatch, constraints_warning
from appliance.runtime.offline import offline_flag
from appliance.tls.ca import expiry_warning, load_ca


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    sub.add_parser("serve", parents=[common], help="run the DNS responder and the HTTPS proxy")
    check = sub.add_parser(
        "check-config", parents=[common], help="validate a config file and the CA against it"
    )
    check.add_argument("path", nargs="?", type=Path)
    offline = sub.add_parser(
        "offline", parents=[common], help="stop or resume contacting upstream at run time"
    )
    offline.add_argument("state", choices=["on", "off"])


def run_serve(_args: argparse.Namespace, config: Config, path: Path) -> int:
    return serve(config, path)


def run_check_config(_args: argparse.Namespace, config: Config, path: Path) -> int:
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


def run_offline(args: argparse.Namespace, config: Config, _path: Path) -> int:
    flag = offline_flag(config)
    if args.state == "on":
        flag.touch()
    else:
        flag.unlink(missing_ok=True)
    print(f"offline {args.state} (a running regcache notices within a second)")
    return 0
