"""`regcache export` and `regcache import`: images carried between gateways, or into an
air-gapped site, as an OCI image layout (a tar or a directory). What is imported is
served as pinned mirror entries (history reason `import`) by its usual names."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

from appliance.cli import output
from appliance.cli.bundle_select import Selection, UsageError, select
from appliance.cli.mirror import _image, _resolved
from appliance.config.model import Config
from appliance.config.registries import Registries
from appliance.kit.units import human_size
from appliance.mirror.actions import ActionError, backup_name
from appliance.mirror.records import ANY_PIN, MirroredTag, Place
from appliance.mirror.report import owner
from appliance.oci.names import ImageName, parse_image
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
        plan, base_id = asyncio.run(_plan(args, config))
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
        # Here, not in a thread: Ctrl-C stops it at once and removes what it wrote.
        bundle.write(plan, FileBlobStore(config.state_dir), target, as_tar=as_tar,
                     base_id=base_id, platforms=tuple(args.platform), progress=meter)  # fmt: skip
        meter.done()
    except (UsageError, ActionError, BundleError, LayoutError) as e:
        print(f"regcache: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"regcache: export failed: {e}", file=sys.stderr)
        return 1
    print(f"wrote {summary} to {args.out}", file=sys.stderr)
    return 0


def run_import(args: argparse.Namespace, config: Config, _path: Path) -> int:
    files = FileBlobStore(config.state_dir)
    try:
        _check_owner(config.state_dir)
        source: Path | BinaryIO = sys.stdin.buffer if args.source == "-" else Path(args.source)
        total = _size(args.source)
        _check_room(config.state_dir, total)
        meter = Meter("read", total, None)
        staged = bundle.stage(source, files, meter)  # here too: Ctrl-C cleans up
        meter.done()
    except (UsageError, BundleError, LayoutError, OSError) as e:
        print(f"regcache: import refused, the store is unchanged: {e}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_import(args, config, files, staged))
    except (UsageError, ActionError, BundleError, LayoutError) as e:
        print(f"regcache: import refused: {e}", file=sys.stderr)
        return 2
    finally:
        staged.discard(files)


def _size(source: str) -> int | None:
    path = Path(source)
    return path.stat().st_size if source != "-" and path.is_file() else None


def _check_owner(state_dir: Path) -> None:
    """Files an import writes as another user than regcache's could not be read by it."""
    owner = state_dir.stat().st_uid
    if os.geteuid() != owner:
        raise UsageError(f"run it as the owner of {state_dir} (uid {owner}), e.g."
                         " `sudo -u regcache regcache import …`")  # fmt: skip


def _check_room(state_dir: Path, total: int | None) -> None:
    free = shutil.disk_usage(state_dir).free
    if total is not None and free < total + (64 << 20):
        raise UsageError(f"the bundle is {human_size(total)}, {human_size(free)} are free"
                         f" under {state_dir}")  # fmt: skip


async def _open(config: Config) -> SqliteIndex:
    if not (config.state_dir / INDEX_NAME).exists():
        raise UsageError(f"no store at {config.state_dir} (start regcache first)")
    return await SqliteIndex.open(config.state_dir / INDEX_NAME)


async def _plan(args: argparse.Namespace, config: Config) -> tuple[bundle.Plan, str | None]:
    index = await _open(config)
    try:
        alone = args.since is not None and not args.images and not args.mirror
        chosen = Selection(tuple(args.images), args.mirror, args.all or alone, args.since,
                           args.referrers)  # fmt: skip
        images = await select(config, index, chosen)
        base = layout.held_blobs(args.base) if args.base else frozenset()
        base_id = bundle.bundle_id(args.base) if args.base else None
        if args.base and base_id is None:
            raise UsageError(f"{args.base} is not a regcache bundle (no {layout.BUNDLE_FILE})")
        plan = await bundle.plan_export(index, FileBlobStore(config.state_dir), images,
                                        platforms=tuple(args.platform), base=base)  # fmt: skip
    finally:
        await index.close()
    return plan, base_id


async def _import(
    args: argparse.Namespace, config: Config, files: FileBlobStore, staged: bundle.Staged
) -> int:
    index = await _open(config)
    try:
        checked = bundle.complete(staged, files)
        images = bundle.images_of(staged)
        places = {image.name: _image(config, image.name) for image in images}
        new = {d: n for d, (_, n) in staged.blobs.items() if files.size_of(d) is None}
        if args.dry_run:
            print(f"would store {len(new)} new blobs ({human_size(sum(new.values()))}) and serve:")
            for image in images:
                print(f"  {image.name}\t{image.digest}")
            return 0
        registries = Registries.of(config)

        def source(image: Image) -> tuple[str, str]:
            name, place = places[image.name]
            return registries.origin(name.domain) or name.domain, place.repository

        holder = f"regcache-import-{os.getpid()}"  # eviction spares them until tags serve them
        await index.hold_digests(holder, checked.needed, held=True)
        try:
            done = await bundle.commit(staged, files, index, checked.manifests, source)
            lost = await _record(config, index, images, places, args.access)
            gone = [d for d in checked.needed if files.size_of(d) is None]
            if gone:  # the running regcache evicted it between its plan and our commit
                raise BundleError(f"{gone[0]} was evicted while importing ({len(gone)} in all):"
                                  " import the bundle again")  # fmt: skip
        finally:
            await index.hold_digests(holder, (), held=False)
        await mirrorjournal.save(config.state_dir, index)
    finally:
        await index.close()
    print(f"imported {len(images)} images ({human_size(done)} new) as pinned mirror entries,"
          f" access {args.access}")  # fmt: skip
    if args.access == "upstream":
        print("access upstream: while upstream cannot be asked (offline), nobody is served"
              " these images", file=sys.stderr)  # fmt: skip
    if lost:
        print(f"not served: {', '.join(lost)} moved meanwhile; import again", file=sys.stderr)
    return 1 if lost else 0


async def _record(
    config: Config,
    index: SqliteIndex,
    images: list[Image],
    places: dict[str, tuple[ImageName, Place]],
    access: str,
) -> list[str]:
    """Each image's tag served by the mirror, pinned at what was imported (a kept
    signature: kept with its image instead); the names a sync moved meanwhile."""
    entries = await _resolved(config, index)
    known = {str(parse_image(e.source)): e.source for e in entries}
    tags = {t.place: t for t in await index.mirrored_tags()}
    lost = []
    for image in images:
        name, place = places[image.name]
        if image.subject is not None:
            await index.keep_referrers(place.registry, place.repository, image.subject,
                                       [image.digest])  # fmt: skip
            continue
        source, current = known.get(str(name), str(name)), tags.get(place)
        entry = owner(entries, place, current.entry if current else None)
        backup = entry.backup if entry else config.mirror.defaults.backup
        keep = entry.keep_backups if entry else config.mirror.defaults.keep_backups
        now = time.time()
        tag = MirroredTag(place, source, image.digest, image.media_type, image.size, now,
                          access, pin=image.digest)  # fmt: skip
        moved = await index.move_tag(
            tag, "import", expect=current.digest if current else None,
            backup=backup_name(backup, place.tag, now) if current else None,
            keep_backups=keep, expect_pin=current.pin if current else ANY_PIN,
        )  # fmt: skip
        if moved is None and current is not None and current.digest == image.digest:
            await index.set_mirror_pin(place, image.digest)
        elif moved is None:
            lost.append(image.name)
        if source not in known.values():
            await index.add_entry(source, access)
            known[str(name)] = source
    return lost


def _list(path: Path) -> int:
    staged = bundle.Staged()
    for entry, data in layout.entries(path):
        if entry.digest is not None:
            break  # the JSON files come first; blobs are counted from the headers
        if entry.name == layout.BUNDLE_FILE:
            staged.bundle = bundle.read_json(entry, data)
        elif entry.name == layout.INDEX_FILE:
            staged.index = bundle.read_json(entry, data)
    if staged.index is None:
        raise UsageError(f"{path}: no index.json before its blobs")
    doc, images, held = staged.bundle, bundle.images_of(staged), layout.held_blobs(path)
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
        self._done, self._count, self._shown = 0, 0, 0.0
        self._started = time.monotonic()
        self._tty = sys.stderr.isatty()

    def __call__(self, n: int) -> None:
        self._done += n
        now = time.monotonic()
        if self._tty and now - self._shown >= 0.5:
            self._shown = now
            print("\r" + self.line(now), end="", file=sys.stderr, flush=True)

    def blob(self) -> None:
        self._count += 1

    def line(self, now: float) -> str:
        rate = self._done / max(now - self._started, 1e-6)
        text = f"{self._verb} {human_size(self._done)}"
        if self._total:
            left = max(self._total - self._done, 0) / max(rate, 1.0)
            text += f" of {human_size(self._total)}"
        text += f", {self._count}" + (f"/{self._blobs}" if self._blobs else "") + " blobs"
        text += f", {human_size(int(rate))}/s"
        return text + (f", ETA {left:.0f} s" if self._total else "")

    def done(self) -> None:
        if self._tty:
            print("\r" + self.line(time.monotonic()), file=sys.stderr)
