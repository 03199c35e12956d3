"""`regcache status` (is it working, what is it saving: read from the admin listener) and
`regcache audit` (what the build network pulled: read from the audit log)."""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import json
import sys
from pathlib import Path
from typing import Any

from appliance.admin import audit, status
from appliance.cli import output
from appliance.config.model import Config
from appliance.kit.units import human_size


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    status = sub.add_parser(
        "status", parents=[common], help="is it working, and how much is it saving"
    )
    status.add_argument("--json", action="store_true")
    audit = sub.add_parser(
        "audit", parents=[common], help="what the build network pulled (the audit log)"
    )
    audit.add_argument("--image", help="REGISTRY/REPOSITORY[:TAG|@DIGEST] (REGISTRY: a host)")
    audit.add_argument("--client", help="client IP address")
    audit.add_argument("--since", help="ISO time or an age: 90m, 12h, 7d")
    audit.add_argument("--until", help="ISO time or an age")
    audit.add_argument("--json", action="store_true", help="JSON lines instead of a table")


def run_status(args: argparse.Namespace, config: Config, _path: Path) -> int:
    if not config.admin.listen:
        print(
            "regcache: status needs the admin listener (admin.listen is empty)",
            file=sys.stderr,
        )
        return 2
    endpoint = config.admin.listen[0]
    address = endpoint.address
    if address.is_unspecified:
        address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    base = f"http://{f'[{address}]' if address.version == 6 else address}:{endpoint.port}"
    token = config.admin.token.read() if config.admin.token else None
    try:
        figures = status.fetch(base, token)
    except OSError as e:
        print(f"regcache: cannot read {base}: {e} (is regcache running?)", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(output.plain(figures), indent=2))
        return 0 if figures.ready else 1
    print(f"ready: {'yes' if figures.ready else 'NO: ' + '; '.join(figures.problems)}")
    print(f"store: {human_size(figures.store_bytes)} used, {human_size(figures.free_bytes)} free")
    if figures.local:
        held = figures.local
        print(f"local registry: {held.get('repositories', 0):.0f} repositories,"
              f" {held.get('tags', 0):.0f} tags, {human_size(held.get('bytes', 0))},"
              f" {held.get('uploads', 0):.0f} uploads in progress")  # fmt: skip
    output.table(
        ("REGISTRY", "HITS", "MISSES", "STALE", "HIT RATIO", "SAVED (FROM STORE)",
         "FETCHED", "UPSTREAM 5xx/429", "RATE LIMIT LEFT"),
        [
            (name, f"{r.hits:.0f}", f"{r.misses:.0f}", f"{r.stale:.0f}",
             "-" if r.hit_ratio is None else f"{r.hit_ratio:.0%}", human_size(r.from_store),
             human_size(r.fetched), f"{r.upstream_errors:.0f}",
             ",".join(f"{v:.0f}" for v in r.ratelimit.values()) or "-")
            for name, r in sorted(figures.registries.items())
        ],
    )  # fmt: skip
    return 0 if figures.ready else 1


def run_audit(args: argparse.Namespace, config: Config, _path: Path) -> int:
    try:
        since = _moment(args.since)
        until = _moment(args.until)
    except ValueError as e:
        print(f"regcache: {e}", file=sys.stderr)
        return 2
    registry = repository = reference = None
    if args.image:
        registry, _, rest = args.image.partition("/")
        repository, reference = rest, None
        if "@" in rest:
            repository, _, reference = rest.partition("@")
        elif ":" in rest.rsplit("/", 1)[-1]:
            repository, _, reference = rest.rpartition(":")
    rows = []
    for entry in audit.read(config.audit_path()):
        when = str(entry.get("time", ""))
        if (since and when < since) or (until and when > until):
            continue
        if args.client and entry.get("client") != args.client:
            continue
        if registry and (entry.get("registry"), entry.get("repository")) != (registry, repository):
            continue
        if reference and reference not in (entry.get("reference"), entry.get("digest")):
            continue
        rows.append(entry)
    if args.json:
        for entry in rows:
            print(json.dumps(entry))
        return 0
    output.table(
        ("TIME (UTC)", "CLIENT", "IMAGE", "REFERENCE", "METHOD", "STATUS", "BYTES", "OUTCOME"),
        [
            (str(e.get("time", ""))[:19].replace("T", " "), e.get("client"),
             f"{e.get('registry')}/{e.get('repository')}", str(e.get("reference"))[:24],
             e.get("method"), e.get("status"), human_size(float(e.get("bytes") or 0)),
             e.get("outcome"))
            for e in rows
        ],
    )  # fmt: skip
    return 0


def _moment(text: str | None) -> str | None:
    """An ISO time, or an age (`90m`, `12h`, `7d`) before now, as a comparable ISO string."""
    if text is None:
        return None
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text[-1:] in units and text[:-1].isdigit():
        moment = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=int(text[:-1]) * units[text[-1]])
    else:
        try:
            moment = dt.datetime.fromisoformat(text)
        except ValueError as e:
            raise ValueError(f"{text!r}: expected an ISO time or an age like 12h") from e
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds")
