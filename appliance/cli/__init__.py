"""The `regcache` command: serve, check-config, CA and store management. Thin by design."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from appliance.cli import bundle, ca, clientconfig, doctor, mirror, serve, status
from appliance.cli import cache as store
from appliance.config.model import (
    Config,
    ConfigError,
    StartupError,
    default_config_path,
    load_config,
)
from appliance.kit import journal, redact
from appliance.tls.ca import CaError

Command = Callable[[argparse.Namespace, Config, Path], int]

_COMMANDS: dict[str, Command] = {
    "serve": serve.run_serve,
    "check-config": serve.run_check_config,
    "offline": serve.run_offline,
    "ca": ca.run,
    "cache": store.run,
    "mirror": mirror.run,
    "audit": status.run_audit,
    "status": status.run_status,
    "doctor": lambda args, config, _path: doctor.run(args, config),
    "client-config": lambda args, config, _path: clientconfig.run(args, config),
    "export": bundle.run_export,
    "import": bundle.run_import,
}


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
    for group in (serve, ca, store, mirror, bundle, status, doctor, clientconfig):
        group.add_parsers(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    path = getattr(args, "path", None) or getattr(args, "config", None) or default_config_path()
    if args.command == "doctor" and not Path(path).exists():
        return doctor.run(args, None)  # a build host: no config, --gateway says where to look
    if args.command == "client-config" and not Path(path).exists():
        return clientconfig.run(args, None)
    try:
        config = load_config(path)
    except ConfigError as e:
        journal.error(f"regcache: config error: {e}", sys.stderr)
        return 2
    logging.basicConfig(level=config.log_level, handlers=[journal.handler(sys.stderr)])
    for handler in logging.getLogger().handlers:
        redact.install(handler)
    try:
        return _COMMANDS[args.command](args, config, Path(path))
    except (CaError, StartupError, OSError) as e:
        journal.error(f"regcache: {e}", sys.stderr)
        return 1
