"""`regcache cache ls|du|rm|gc|verify|pin|unpin`: the store, inspected and managed (also
while regcache serves). Tables by default, JSON with --json."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from appliance.cli import output
from appliance.config.model import Config
from appliance.config.registries import Registries
from appliance.kit.units import human_size
from appliance.oci.digest import Digest, DigestError
from appliance.store import maintenance
from appliance.store.files import FileBlobStore
from appliance.store.index import SqliteIndex
from appliance.store.reconcile import INDEX_NAME


class UsageError(Exception):
    """A command line that names nothing in the store, or names it wrongly."""


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    cache = sub.add_parser(
        "cache", parents=[common], help="inspect and manage the store (works while serving)"
    ).add_subparsers(dest="cache_command", required=True)
    output = argparse.ArgumentParser(add_help=False, parents=[common])
    output.add_argument("--json", action="store_true", help="JSON instead of a table")
    image = "REGISTRY/REPOSITORY[:TAG|@DIGEST]; REGISTRY is a host or a configured name"

    ls = cache.add_parser("ls", parents=[output], help="images in the store")
    ls.add_argument("--registry", help="a registry host or configured name")
    ls.add_argument("--repository")
    ls.add_argument("--tag")
    ls.add_argument("--all", action="store_true", help="also an index's platform manifests")
    cache.add_parser("du", parents=[output], help="bytes per registry, and bytes served")
    rm = cache.add_parser("rm", parents=[output], help="remove images, a repository or a digest")
    rm.add_argument("target", nargs="?", help=f"{image}, or a bare digest")
    rm.add_argument("--registry", help="remove everything from this registry")
    rm.add_argument("--force", action="store_true", help="also pinned or referenced content")
    gc = cache.add_parser("gc", parents=[output], help="reconcile, drop unused loose blobs, evict")
    gc.add_argument(
        "--min-age-s", type=float, default=86400.0, help="loose blobs unused this long go"
    )
    verify = cache.add_parser("verify", parents=[output], help="re-hash blobs; quarantine bad")
    verify.add_argument("--sample", type=int, help="check this many random blobs, not all")
    for name, text in (("pin", "keep whatever the size bound says"), ("unpin", "undo pin")):
        pin = cache.add_parser(name, parents=[output], help=text)
        pin.add_argument("target", help=f"{image} (a tag pin follows the tag)")


def run(args: argparse.Namespace, config: Config, _path: Path) -> int:
    index_path = config.state_dir / INDEX_NAME
    if not index_path.exists():
        print(f"regcache: no store at {config.state_dir} (start regcache first)", file=sys.stderr)
        return 1
    try:
        return asyncio.run(_run(args, config))
    except (UsageError, maintenance.Refused) as e:
        print(f"regcache: {e}", file=sys.stderr)
        return 2


async def _run(args: argparse.Namespace, config: Config) -> int:
    index = await SqliteIndex.open(config.state_dir / INDEX_NAME)
    files = FileBlobStore(config.state_dir)
    try:
        command: Callable[[], Awaitable[Any]] = {
            "ls": lambda: _ls(args, config, index),
            "du": lambda: maintenance.usage(index),
            "rm": lambda: _rm(args, config, index, files),
            "gc": lambda: maintenance.gc(index, files, config.store, args.min_age_s),
            "verify": lambda: maintenance.verify(index, files, args.sample, _progress),
            "pin": lambda: _pin(args, config, index, pinned=True),
            "unpin": lambda: _pin(args, config, index, pinned=False),
        }[args.cache_command]
        result = await command()
    finally:
        await index.close()
    if args.json:
        print(json.dumps(output.plain(result), indent=2))
    else:
        _print(args.cache_command, result)
    failed = isinstance(result, maintenance.Verification) and (result.bad or result.missing)
    return 1 if failed else 0


async def _hosts(config: Config, index: SqliteIndex, name: str) -> frozenset[str]:
    """Stored registry hosts that `name` (a host, or a configured registry) stands for."""
    stored = {r for r, _, _ in await index.sources()} | {r for r, *_ in await index.tags()}
    hosts = Registries.of(config).api_hosts(name)
    if hosts is not None:
        return frozenset(h for h in stored if hosts.match(h))
    return frozenset({name.lower()})


async def _selection(config: Config, index: SqliteIndex, target: str) -> maintenance.Selection:
    """`REGISTRY/REPOSITORY[:TAG|@DIGEST]` → a selection."""
    registry, slash, rest = target.partition("/")
    if not slash or not rest:
        raise UsageError(f"{target!r}: expected REGISTRY/REPOSITORY[:TAG|@DIGEST]")
    digest = tag = None
    if "@" in rest:
        rest, _, digest = rest.partition("@")
        _digest(digest)
    elif ":" in rest.rsplit("/", 1)[-1]:
        rest, _, tag = rest.rpartition(":")
    return maintenance.Selection(await _hosts(config, index, registry), rest, tag, digest)


def _digest(text: str) -> str:
    try:
        return str(Digest.parse(text))
    except DigestError as e:
        raise UsageError(str(e)) from e


async def _ls(
    args: argparse.Namespace, config: Config, index: SqliteIndex
) -> list[maintenance.Image]:
    registries = None if args.registry is None else await _hosts(config, index, args.registry)
    selection = maintenance.Selection(registries, args.repository, args.tag)
    local = config.local.hosts[0] if config.local.hosts else None
    return await maintenance.images(index, selection, nested=args.all, local=local)


async def _rm(
    args: argparse.Namespace, config: Config, index: SqliteIndex, files: FileBlobStore
) -> maintenance.Removal:
    if args.registry is not None and args.target is None:
        selection = maintenance.Selection(await _hosts(config, index, args.registry))
    elif args.target is not None and args.registry is None:
        if "/" in args.target:
            selection = await _selection(config, index, args.target)
        else:
            selection = maintenance.Selection(digest=_digest(args.target))
    else:
        raise UsageError("rm takes an image, a digest, or --registry (one of them)")
    if selection.registries is not None and not await maintenance.images(
        index, selection, nested=True
    ):
        raise UsageError(f"nothing in the store matches {args.target or args.registry}")
    return await maintenance.remove(index, files, selection, force=args.force)


async def _pin(
    args: argparse.Namespace, config: Config, index: SqliteIndex, *, pinned: bool
) -> dict[str, Any]:
    selection = await _selection(config, index, args.target)
    reference = selection.digest or selection.tag
    if reference is None or selection.repository is None:
        raise UsageError(f"{args.target!r}: pin a tag (:TAG) or a digest (@DIGEST)")
    assert selection.registries is not None
    hosts = sorted(selection.registries)
    if not hosts:
        raise UsageError(f"no registry in the store is called {args.target.split('/')[0]!r}")
    changed = [await index.set_pin(host, selection.repository, reference, pinned) for host in hosts]
    return {
        "pinned" if pinned else "unpinned": [f"{h}/{selection.repository}" for h in hosts],
        "reference": reference,
        "changed": any(changed),
    }


def _progress(done: int, total: int, hashed: int) -> None:
    if done == total or done % 100 == 0:
        print(f"\rverified {done}/{total} blobs, {human_size(hashed)}", end="", file=sys.stderr)
        if done == total:
            print(file=sys.stderr)


def _print(command: str, result: Any) -> None:
    if command == "ls":
        output.table(
            ("REGISTRY", "REPOSITORY", "TAG", "DIGEST", "SIZE", "LAST ACCESS (UTC)", "PINNED"),
            [
                (i.registry, i.repository, ",".join(i.tags) or "-", i.digest[:19],
                 human_size(i.size), output.when(i.last_access_s), "yes" if i.pinned else "")
                for i in result
            ],
        )  # fmt: skip
    elif command == "du":
        output.table(
            ("REGISTRY", "IMAGES", "BLOBS", "STORED", "SERVED FROM STORE", "FETCHED UPSTREAM"),
            [
                (r.registry, r.images, r.blobs, human_size(r.bytes),
                 human_size(r.served_from_store), human_size(r.fetched))
                for r in result.registries
            ],
        )  # fmt: skip
        print(
            f"total: {result.blobs} blobs, {human_size(result.bytes)} (shared blobs once); "
            f"not referenced by any manifest: {result.unreferenced_blobs} blobs, "
            f"{human_size(result.unreferenced_bytes)}"
        )
    elif command == "rm":
        print(f"removed {result.rows} blobs and manifests, {human_size(result.bytes)}")
        for why in result.kept:
            print(f"kept {why}")
    elif command == "gc":
        r = result.reconciliation
        print(
            f"reconciled {r.files} files: {r.rows_removed} rows without file removed, "
            f"{r.reindexed} files re-indexed, {r.quarantined} quarantined"
        )
        print(
            f"removed {result.unreferenced_rows} unused loose blobs, "
            f"{human_size(result.unreferenced_bytes)}"
        )
        e = result.eviction
        print("within bounds" if e is None else f"evicted {e.rows} rows, {human_size(e.bytes)}")
    elif command == "verify":
        rate = result.bytes / result.seconds / 1e6 if result.seconds else 0.0
        print(
            f"verified {result.checked} blobs, {human_size(result.bytes)} "
            f"in {result.seconds:.1f} s "
            f"({rate:.0f} MB/s): {len(result.bad)} bad (quarantined), "
            f"{len(result.missing)} missing"
        )
        for digest in result.bad:
            print(f"bad {digest}")
    else:
        verb = "pinned" if "pinned" in result else "unpinned"
        state = "" if result["changed"] else " (already so)"
        print(f"{verb} {', '.join(result[verb])} {result['reference']}{state}")
