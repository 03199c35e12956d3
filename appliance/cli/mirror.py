"""`regcache mirror status|diff|sync|pin|unpin|rollback|history|add`: the managed mirror,
inspected and steered, also while regcache serves (diff and sync are requests left in
the index for the running process). Tables by default, JSON with --json."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from appliance.cli import output
from appliance.cli.mirror_show import SHOW, failed, iso
from appliance.config.model import Config
from appliance.config.registries import Registries
from appliance.mirror import actions, entries
from appliance.mirror.actions import ActionError
from appliance.mirror.records import MirroredTag, MirrorRecords, Place
from appliance.mirror.report import Report, owner, report
from appliance.oci.digest import Digest
from appliance.oci.names import ImageName, InvalidName, parse_image, same_repository
from appliance.runtime.sharing import shared_records
from appliance.store import mirrorjournal
from appliance.store.index import SqliteIndex
from appliance.store.reconcile import INDEX_NAME
from appliance.store.sharedmirror import SharedMirror

_POLL_S = 0.2


class UsageError(Exception):
    """A command line naming nothing the mirror has, or naming it wrongly."""


class Failed(Exception):
    """The running regcache did not take or finish a request."""


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    mirror = sub.add_parser(
        "mirror", parents=[common], help="the managed mirror: status, sync, pin, rollback"
    ).add_subparsers(dest="mirror_command", required=True)
    out = argparse.ArgumentParser(add_help=False, parents=[common])
    out.add_argument("--json", action="store_true", help="JSON instead of a table")
    image = "[REGISTRY/]REPOSITORY:TAG, as in a FROM line"

    mirror.add_parser("status", parents=[out], help="entries, tags, drift, runs, budgets")
    for name, text in (("diff", "what the next sync would change"), ("sync", "sync now")):
        ask = mirror.add_parser(name, parents=[out], help=f"{text} (asks the running regcache)")
        ask.add_argument("entries", nargs="*", metavar="ENTRY", help="an entry (default: all)")
        ask.add_argument(
            "--start-timeout", type=float, default=10.0, metavar="S",
            help="give up if no running regcache takes the request within S seconds",
        )  # fmt: skip
        ask.add_argument(
            "--timeout", type=float, default=600.0, metavar="S",
            help="give up waiting for the result after S seconds",
        )  # fmt: skip
        if name == "sync":
            ask.add_argument("--no-wait", action="store_true", help="return once it started")
    pin = mirror.add_parser("pin", parents=[out], help="hold a tag at a digest (default: now)")
    pin.add_argument("image", metavar="IMAGE[@DIGEST]", help=image)
    mirror.add_parser("unpin", parents=[out], help="let syncs move a tag again").add_argument(
        "image", metavar="IMAGE", help=image
    )
    rollback = mirror.add_parser("rollback", parents=[out], help="serve an earlier digest now")
    rollback.add_argument("image", metavar="IMAGE", help=image)
    back = rollback.add_mutually_exclusive_group()
    back.add_argument("--steps", type=int, default=1, help="moves back (default 1)")
    back.add_argument("--to", metavar="DIGEST|DATE", help="a digest it served, or a time (UTC)")
    mirror.add_parser("history", parents=[out], help="every move of a tag").add_argument(
        "image", metavar="IMAGE", help=image
    )
    add = mirror.add_parser("add", parents=[out], help="promote a cached tag into the mirror")
    add.add_argument("--from-cache", required=True, metavar="IMAGE", help=image)
    add.add_argument(
        "--access", choices=("network", "upstream"),
        help="who may pull it (default: network if upstream serves it to anyone)",
    )  # fmt: skip
    rm = mirror.add_parser(
        "rm", parents=[out], help="forget an entry no longer configured, or one `add` added"
    )
    rm.add_argument("entry", metavar="ENTRY", help="its source, as status shows it")


def run(args: argparse.Namespace, config: Config, _path: Path) -> int:
    if not (config.state_dir / INDEX_NAME).exists():
        print(f"regcache: no store at {config.state_dir} (start regcache first)", file=sys.stderr)
        return 1
    try:
        return asyncio.run(_run(args, config))
    except (UsageError, ActionError) as e:
        print(f"regcache: {e}", file=sys.stderr)
        return 2
    except Failed as e:
        print(f"regcache: {e}", file=sys.stderr)
        return 1


_CHANGES = frozenset({"pin", "unpin", "rollback", "add", "rm"})


async def _run(args: argparse.Namespace, config: Config) -> int:
    index = await SqliteIndex.open(config.state_dir / INDEX_NAME)
    try:
        async with shared_records(config, index) as rows:  # several gateways: their tags
            result = await _command(args, config, index, rows)
        if args.mirror_command in _CHANGES:  # kept beside the index (a running regcache
            await mirrorjournal.save(config.state_dir, index)  # would, a second later)
    finally:
        await index.close()
    if args.json:
        print(json.dumps(output.plain(result), indent=2))
    else:
        SHOW[args.mirror_command](result)
    return 1 if failed(result) else 0


async def _command(
    args: argparse.Namespace, config: Config, index: SqliteIndex, rows: MirrorRecords
) -> Any:
    command: Callable[[], Awaitable[Any]] = {
        "status": lambda: _status(config, index),
        "diff": lambda: _ask(args, config, index),
        "sync": lambda: _ask(args, config, index),
        "pin": lambda: _pin(args, config, index, rows),
        "unpin": lambda: _unpin(args, config, index, rows),
        "rollback": lambda: _rollback(args, config, index, rows),
        "history": lambda: _history(args, config, index, rows),
        "add": lambda: _add(args, config, index, rows),
        "rm": lambda: _rm(args, config, index),
    }[args.mirror_command]
    return await command()


async def _resolved(config: Config, index: SqliteIndex) -> list[entries.Entry]:
    return entries.resolve(config.mirror, Registries.of(config), await index.added_entries())


async def _status(config: Config, index: SqliteIndex) -> Report:
    return await report(index, await _resolved(config, index))


async def _ask(args: argparse.Namespace, config: Config, index: SqliteIndex) -> Any:
    """Leave the request for the running process and wait for its answer."""
    known = await _resolved(config, index)
    chosen = tuple(_entry_named(text, known) for text in args.entries)
    request_id = await index.ask(args.mirror_command, chosen)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + args.start_timeout
    while (request := await index.request(request_id)) is None or request.started_s is None:
        if request is None:
            raise Failed(f"the {args.mirror_command} request was removed before any took it")
        if loop.time() >= deadline and await index.withdraw_request(request_id):
            raise Failed(
                f"no running regcache took the request within {args.start_timeout:g} s"
                " (is it running with this config?)"
            )
        await asyncio.sleep(_POLL_S)
    if getattr(args, "no_wait", False):
        return {"request": request_id, "started": True}
    deadline = loop.time() + args.timeout
    while request.done_s is None:
        if loop.time() >= deadline:
            raise Failed(f"the {args.mirror_command} did not finish within {args.timeout:g} s")
        await asyncio.sleep(_POLL_S)
        request = await index.request(request_id) or request
    if request.result is None:
        raise Failed(f"regcache finished the {args.mirror_command} without a result")
    return json.loads(request.result)


def _entry_named(text: str, known: list[entries.Entry]) -> str:
    """The configured source `text` stands for (the same image written another way too)."""
    try:
        name = str(parse_image(text))
    except InvalidName:
        name = text
    for entry in known:
        if text == entry.source or name == str(parse_image(entry.source)):
            return entry.source
    listed = ", ".join(e.source for e in known) or "none (see mirror.entries in the config)"
    raise UsageError(f"{text!r} is not a mirror entry; the entries are: {listed}")


def _image(config: Config, text: str, *, digest: bool = False) -> tuple[ImageName, Place]:
    """`[REGISTRY/]REPOSITORY:TAG` (`@DIGEST` too if `digest`) → where the mirror keys it."""
    try:
        name = parse_image(text)
    except InvalidName as e:
        raise UsageError(str(e)) from e
    if name.tag is None:
        raise UsageError(f"{text!r}: name a tag ([REGISTRY/]REPOSITORY:TAG)")
    if name.digest is not None and not digest:
        raise UsageError(f"{text!r}: name the tag without a digest")
    registry = Registries.of(config).place(name.domain)
    if registry is None:
        raise UsageError(f"{name.domain!r} is not an API host of a configured registry")
    return name, Place(registry, name.repository, name.tag)


async def _options(config: Config, index: SqliteIndex, place: Place) -> dict[str, Any]:
    """The backup template and generations kept of the entry the tag belongs to."""
    tags = {t.place: t for t in await index.mirrored_tags()}
    recorded = tags[place].entry if place in tags else None
    entry = owner(await _resolved(config, index), place, recorded)
    if entry is None:
        defaults = config.mirror.defaults
        return {"backup": defaults.backup, "keep_backups": defaults.keep_backups}
    return {"backup": entry.backup, "keep_backups": entry.keep_backups}


def _stored(index: SqliteIndex, rows: MirrorRecords | None = None) -> actions.Stored:
    """A manifest's (type, size) if this gateway's store holds it, or (gateways sharing a
    bucket) the bucket does: a tag moved to it is served from there."""

    async def stored(digest: Digest) -> tuple[str, int] | None:
        media_type, row = await index.manifest_type(digest), await index.blob(digest)
        if media_type is not None and row is not None:
            return media_type, row.size
        return await rows.manifest_info(digest) if isinstance(rows, SharedMirror) else None

    return stored


async def _state(index: SqliteIndex, place: Place, message: str) -> dict[str, Any]:
    tag = await actions.serving(index, place)
    return {"tag": str(place), "serving": tag.digest, "pinned": tag.pin, "message": message}


async def _pin(
    args: argparse.Namespace, config: Config, index: SqliteIndex, rows: MirrorRecords
) -> dict[str, Any]:
    name, place = _image(config, args.image, digest=True)
    options = await _options(config, index, place)
    message = await actions.pin(rows, place, name.digest, _stored(index, rows), **options)
    return await _state(index, place, message)


async def _unpin(
    args: argparse.Namespace, config: Config, index: SqliteIndex, rows: MirrorRecords
) -> dict[str, Any]:
    _, place = _image(config, args.image)
    return await _state(index, place, await actions.unpin(rows, place))


async def _rollback(
    args: argparse.Namespace, config: Config, index: SqliteIndex, rows: MirrorRecords
) -> dict[str, Any]:
    _, place = _image(config, args.image)
    options = await _options(config, index, place)
    move = await actions.rollback(
        rows, place, _stored(index, rows), steps=args.steps, to=args.to, **options
    )
    return {"tag": str(place), "old": move.old, "new": move.new, "backup": move.backup,
            "pinned": move.new}  # fmt: skip


async def _history(
    args: argparse.Namespace, config: Config, index: SqliteIndex, rows: MirrorRecords
) -> dict[str, Any]:
    _, place = _image(config, args.image)
    moves = await rows.mirror_history(place)  # every gateway's, when they share
    if not moves:
        await actions.serving(index, place)  # not mirrored: says so
    return {
        "tag": str(place),
        "moves": [
            {"at": iso(m.moved_s), "moved_s": m.moved_s, "reason": m.reason, "old": m.old,
             "new": m.new, "backup": m.backup}
            for m in moves
        ],
    }  # fmt: skip


async def _add(
    args: argparse.Namespace, config: Config, index: SqliteIndex, rows: MirrorRecords
) -> dict[str, Any]:
    """Serve a tag the cache holds from the mirror from now on, as an entry of its own."""
    name, place = _image(config, args.from_cache)
    if any(t.place == place for t in await index.mirrored_tags()):
        raise UsageError(f"{place} is already mirrored (see `regcache mirror status`)")
    host, repository, digest = await _cached(config, index, name, place)
    found = await _stored(index)(digest)
    if found is None:
        raise UsageError(f"{args.from_cache}: the cache maps it to {digest}, not in the store")
    access, why = args.access, "as asked"
    if access is None:
        public = await index.public_status(host, repository)
        access, why = (
            ("network", "upstream serves it to anyone")
            if public is not None and public[0]
            else ("upstream", "not known to be public; --access network serves it to all")
        )
    known = {str(parse_image(e.source)): e.source for e in await _resolved(config, index)}
    source = known.get(str(name), str(name))
    tag = MirroredTag(place, source, digest, found[0], found[1], time.time(), access)
    keep = (await _options(config, index, place))["keep_backups"]
    if await rows.move_tag(tag, "add", expect=None, backup=None, keep_backups=keep) is None:
        raise ActionError(f"{place} was mirrored meanwhile")
    if source not in known.values():
        await index.add_entry(source, access)
    return {"tag": str(place), "entry": source, "digest": digest, "access": access, "why": why}


async def _rm(args: argparse.Namespace, config: Config, index: SqliteIndex) -> dict[str, Any]:
    """Forget an entry: its tags are no longer mirrored, their content may be evicted."""
    wanted = str(parse_image(args.entry))
    configured = {str(parse_image(e.source)) for e in config.mirror.entries}
    if wanted in configured:
        raise UsageError(f"{args.entry} is in the config (mirror.entries): remove it there first")
    recorded = {t.entry for t in await index.mirrored_tags()}
    recorded |= {source for source, _ in await index.added_entries()}
    sources = sorted(s for s in recorded if str(parse_image(s)) == wanted)
    if not sources:
        raise UsageError(f"{args.entry}: the mirror keeps nothing for it")
    tags = sum([await index.forget_entry(source) for source in sources])
    return {"entry": args.entry, "forgotten_tags": tags}


async def _cached(
    config: Config, index: SqliteIndex, name: ImageName, place: Place
) -> tuple[str, str, Digest]:
    """(API host, repository, digest) of the cache's freshest mapping of the tag."""
    registries = Registries.of(config)
    newest: tuple[float, str, str, Digest] | None = None
    seen = {(h, r) for h, r, t, _ in await index.tags() if t == name.tag}
    for host, repository in sorted(seen):
        if registries.place(host) != place.registry:
            continue
        if repository not in same_repository(host, name.repository):
            continue
        for row in await index.tag_rows(host, repository, place.tag):
            if newest is None or row.validated_s > newest[0]:
                newest = (row.validated_s, host, repository, row.digest)
    if newest is None:
        raise UsageError(f"{name} is not in the cache (pull it through regcache first)")
    return newest[1], newest[2], newest[3]
