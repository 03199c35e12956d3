"""`regcache export` and `regcache import`: images carried between gateways, or into an
air-gapped site, as an OCI image layout (a tar or a directory). What is imported is
served as pinned mirror entries (history reason `import`) by its usual names."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

from appliance.cli import output
from appliance.cli.bundle_select import Selection, UsageError, select
from appliance.cli.mirror import _image, _options, _resolved
from appliance.config.model import Config
from appliance.config.registries import Registries
from appliance.kit.units import human_size
from appliance.mirror.actions import ActionError, backup_name
from appliance.mirror.records import ANY_PIN, MirroredTag
from appliance.oci.names import parse_image
from appliance.store import bundle, layout, mirrorjournal
from appliance.store.bundle import BundleError, Image
from appliance.store.files import FileBlobStore
from appliance.store.index import SqliteIndex
from appliance.store.layout import LayoutError
from appliance.store.reconcile import INDEX_NAME


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    export = sub.add_parser(
        "export", parents=[common], help="images of the store as an OCI image layout"
    )
    export.add_argument("images", nargs="*", metavar="IMAGE", help="[REGISTRY/]REPO:TAG")
    which = export.add_mutually_exclusive_group()
    which.add_argument("--mirror", action="store_true", help="every mirrored tag")
    which.add_argument("--all", action="store_true", help="every tagged image in the store")
    export.add_argument("--since", metavar="TIME", help="tags set since: ISO time or 90m, 12h, 7d")
    export.add_argument(
        "--platform", action="append", default=[], metavar="OS/ARCH[/VARIANT]",
        help="only these platforms of an index (the index stays whole)",
    )  # fmt: skip
    export.add_argument("--referrers", action="store_true", help="signatures kept with them")
    export.add_argument("--base", type=Path, metavar="EARLIER", help="leave out its blobs")
    export.add_argument("--out", metavar="FILE.tar|DIR|-", help="a .tar, - (a tar), else a dir")
    export.add_argument("--list", type=Path, metavar="BUNDLE", help="what a bundle holds")
    export.add_argument("--dry-run", action="store_true", help="say what would be written")
    imp = sub.add_parser("import", parents=[common], help="a bundle into the store and mirror")
    imp.add_argument("source", metavar="FILE.tar|DIR|-")
    imp.add_argument(
        "--access", choices=("network", "upstream"), default="network",
        help="who may pull what is imported (default network: every client)",
    )  # fmt: skip
    imp.add_argument("--dry-run", action="store_true", help="check it, say what would change")


def run_export(args: argparse.Namespace, config: Config, _path: Path) -> int:
    try:
        if args.list is not None:
            return _list(args.list)
        if args.out is None and not args.dry_run:
            raise UsageError("say where: --out FILE.tar|DIR|-")
        return asyncio.run(_export(args, config))
    except (UsageError, ActionError, BundleError, LayoutError) as e:
        print(f"regcache: {e}", file=sys.stderr)
        return 2


def run_import(args: argparse.Namespace, config: Config, _path: Path) -> int:
    source = Path(args.source)
    total = source.stat().st_size if args.source != "-" and source.is_file() else None
    try:
        return asyncio.run(_import(args, config, total))
    except (UsageError, ActionError, BundleError, LayoutError) as e:
        print(f"regcache: import refused, the store is unchanged: {e}", file=sys.stderr)
        return 2


async def _open(config: Config) -> tuple[SqliteIndex, FileBlobStore]:
    if not (config.state_dir / INDEX_NAME).exists():
        raise UsageError(f"no store at {config.state_dir} (start regcache first)")
    files = FileBlobStore(config.state_dir)
    return await SqliteIndex.open(config.state_dir / INDEX_NAME), files


async def _export(args: argparse.Namespace, config: Config) -> int:
    index, files = await _open(config)
    try:
        chosen = Selection(tuple(args.images), args.mirror, args.all, args.since,
                           args.referrers)  # fmt: skip
        images = await select(config, index, chosen)
        base = layout.held_blobs(args.base) if args.base else frozenset()
        base_id = bundle.bundle_id(args.base) if args.base else None
        if args.base and base_id is None:
            raise UsageError(f"{args.base} is not a regcache bundle (no {layout.BUNDLE_FILE})")
        platforms = tuple(args.platform)
        plan = await bundle.plan_export(index, files, images, platforms=platforms, base=base)
    finally:
        await index.close()
    summary = f"{len(plan.images)} images, {len(plan.blobs)} blobs, {human_size(plan.bytes)}"
    if base_id:
        summary += f"; {len(plan.omitted)} blobs left out, in {base_id}"
    if args.dry_run:
        for image in plan.images:
            print(f"{image.name}\t{image.digest}", file=sys.stderr)
        print(f"would write {summary}", file=sys.stderr)
        return 0
    as_tar = args.out == "-" or args.out.endswith(".tar")
    target: Path | BinaryIO = sys.stdout.buffer if args.out == "-" else Path(args.out)
    meter = Meter("exported", plan.bytes, len(plan.blobs))
    await asyncio.to_thread(bundle.write, plan, files, target, as_tar=as_tar,
                            base_id=base_id, platforms=platforms, progress=meter)  # fmt: skip
    meter.done()
    print(f"wrote {summary} to {args.out}", file=sys.stderr)
    return 0


async def _import(args: argparse.Namespace, config: Config, total: int | None) -> int:
    index, files = await _open(config)
    source: Path | BinaryIO = sys.stdin.buffer if args.source == "-" else Path(args.source)
    meter = Meter("read", total, None)
    try:
        staged = await asyncio.to_thread(bundle.stage, source, files, meter)
        meter.done()
        try:
            manifests = await bundle.complete(staged, files, index)
            images = bundle.images_of(staged)
            places = {image.name: _image(config, image.name) for image in images}
            if args.dry_run:
                print(f"would store {len(staged.blobs)} blobs and serve:")
                for image in images:
                    print(f"  {image.name}\t{image.digest}")
                return 0
            registries = Registries.of(config)
            done = await bundle.commit(staged, files, index, manifests, lambda image: (
                registries.origin(places[image.name][0].domain) or places[image.name][0].domain,
                places[image.name][1].repository))  # fmt: skip
        finally:
            staged.discard(files)
        for image in images:
            await _record(config, index, image, places[image.name], args.access)
        await mirrorjournal.save(config.state_dir, index)
    finally:
        await index.close()
    print(f"imported {len(images)} images ({human_size(done)} new) as pinned mirror entries,"
          f" access {args.access}")  # fmt: skip
    if args.access == "upstream":
        print("access upstream: while upstream cannot be asked (offline), nobody is served"
              " these images", file=sys.stderr)  # fmt: skip
    return 0


async def _record(
    config: Config, index: SqliteIndex, image: Image, named: tuple[Any, Any], access: str
) -> None:
    """The image's tag served by the mirror, pinned at what was imported (a kept
    signature: kept with its image instead)."""
    name, place = named
    if image.subject is not None:
        await index.keep_referrers(place.registry, place.repository, image.subject,
                                   [image.digest])  # fmt: skip
        return
    known = {str(parse_image(e.source)): e.source for e in await _resolved(config, index)}
    source = known.get(str(name), str(name))
    current = next((t for t in await index.mirrored_tags() if t.place == place), None)
    options = await _options(config, index, place)
    now = time.time()
    tag = MirroredTag(place, source, image.digest, image.media_type, image.size, now, access,
                      pin=image.digest)  # fmt: skip
    backup = backup_name(options["backup"], place.tag, now) if current is not None else None
    moved = await index.move_tag(
        tag, "import", expect=None if current is None else current.digest, backup=backup,
        keep_backups=options["keep_backups"],
        expect_pin=ANY_PIN if current is None else current.pin,
    )  # fmt: skip
    if moved is None and current is not None and current.digest == image.digest:
        await index.set_mirror_pin(place, image.digest)
    if source not in known.values():
        await index.add_entry(source, access)


def _list(path: Path) -> int:
    doc: dict[str, Any] = {}
    images: list[Image] = []
    staged = bundle.Staged()
    for entry, data in layout.entries(path):
        if entry.digest is not None:
            break  # the JSON files come first; blobs are counted from the headers
        if entry.name == layout.BUNDLE_FILE:
            doc = json.loads(layout.read_small(entry, data))
        elif entry.name == layout.INDEX_FILE:
            staged.index = json.loads(layout.read_small(entry, data))
    if staged.index is None:
        raise UsageError(f"{path}: no index.json before its blobs")
    images = bundle.images_of(staged)
    held = layout.held_blobs(path)
    platforms = ",".join(doc.get("platforms") or []) or "all"
    print(f"bundle {doc.get('id', '(not made by regcache)')}, created {doc.get('created', '?')}"
          f", base {doc.get('base') or 'none'}, platforms {platforms}")  # fmt: skip
    output.table(("IMAGE", "DIGEST", "SIZE"),
                 [(i.name if i.subject is None else f"  signature of {i.subject}", str(i.digest),
                   human_size(i.size)) for i in images])  # fmt: skip
    print(f"{len(held)} blobs, {human_size(int(doc.get('bytes', 0)))};"
          f" {len(doc.get('omitted') or [])} left out (in its base)")  # fmt: skip
    return 0


class Meter:
    """Bytes and blobs so far, rate and time left, on stderr when it is a terminal."""

    def __init__(self, verb: str, total: int | None, blobs: int | None) -> None:
        self._verb, self._total, self._blobs = verb, total, blobs
        self._done, self._shown, self._started = 0, 0.0, time.monotonic()
        self._tty = sys.stderr.isatty()

    def __call__(self, n: int) -> None:
        self._done += n
        now = time.monotonic()
        if self._tty and now - self._shown >= 0.5:
            self._shown = now
            print("\r" + self.line(now), end="", file=sys.stderr, flush=True)

    def line(self, now: float) -> str:
        rate = self._done / max(now - self._started, 1e-6)
        text = f"{self._verb} {human_size(self._done)}"
        if self._total:
            left = max(self._total - self._done, 0) / max(rate, 1.0)
            text += f" of {human_size(self._total)}, ETA {left:.0f} s"
        return text + f", {human_size(int(rate))}/s"

    def done(self) -> None:
        if self._tty:
            print("\r" + self.line(time.monotonic()), file=sys.stderr)
