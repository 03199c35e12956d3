"""Bundles: images of the store as an OCI image layout (`layout.py`), and back.

Export: the chosen images' manifests and all they need (an index's selected platforms,
each manifest's config, layers and `blobs`; kept signatures), each checked whole in the
store, written as `oci-layout`, `regcache-bundle.json`, `index.json`, blobs. A delta
leaves out what an earlier bundle holds and lists it, with that bundle's id.

Import: every blob is hashed while read into a temp file of the store; only when the
whole bundle is read, every digest matched and every manifest found complete are the
files committed and indexed. A bad bundle leaves the store as it was.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from appliance.oci import manifest as oci
from appliance.oci.digest import Digest, DigestError
from appliance.oci.mediatypes import INDEX_TYPES
from appliance.store import layout
from appliance.store.files import FileBlobStore, TempBlob
from appliance.store.index import SqliteIndex
from appliance.store.layout import BUNDLE_FILE, INDEX_FILE, LAYOUT_FILE, LayoutError, Progress

NAME = "io.containerd.image.name"
REF = "org.opencontainers.image.ref.name"
SUBJECT = "io.regcache.subject"
"""On a signature or attestation kept with an image: the digest it refers to."""
MAX_MANIFEST = 4 << 20


class BundleError(ValueError):
    """What cannot be exported or imported, and why."""


@dataclass(frozen=True, slots=True)
class Image:
    """An image in a bundle: its full name and tag, and the manifest the tag names."""

    name: str
    tag: str
    digest: Digest
    media_type: str
    size: int
    subject: Digest | None = None
    """Set on a signature or attestation of the image `name` names."""


@dataclass(slots=True)
class Plan:
    images: list[Image]
    blobs: dict[Digest, int] = field(default_factory=dict)
    """Every digest written (manifests too), in the order written, with its size."""
    omitted: list[Digest] = field(default_factory=list)
    """Needed, but in the base bundle."""

    @property
    def bytes(self) -> int:
        return sum(self.blobs.values())


async def plan_export(
    index: SqliteIndex,
    files: FileBlobStore,
    images: list[Image],
    *,
    platforms: tuple[str, ...] = (),
    base: AbstractSet[Digest] = frozenset(),
) -> Plan:
    """What a bundle of `images` holds; BundleError naming the first digest that is not
    whole in the store."""
    plan, needed = Plan(images), dict[Digest, int]()
    for image in images:
        await _closure(index, files, image, image.digest, platforms, plan, needed)
    for digest, size in needed.items():
        if digest in base:
            plan.omitted.append(digest)
        else:
            plan.blobs[digest] = size
    return plan


async def _closure(
    index: SqliteIndex,
    files: FileBlobStore,
    image: Image,
    digest: Digest,
    platforms: tuple[str, ...],
    plan: Plan,
    needed: dict[Digest, int],
) -> None:
    if digest in needed:
        return
    size = await _whole(index, files, image, digest)
    needed[digest] = size
    try:
        body = files.path_for(digest).read_bytes()  # ≤ 4 MiB: manifests are kept that small
    except FileNotFoundError:
        raise _evicted(digest) from None
    kind = await index.manifest_type(digest) or oci.sniff_manifest_type(body) or ""
    if kind in INDEX_TYPES:
        for child, platform in oci.platform_manifests(body):
            if not platforms or platform is None or platform in platforms:
                await _closure(index, files, image, child, platforms, plan, needed)
        return
    for blob in oci.fetchable_blobs(body):
        if blob not in needed:
            needed[blob] = await _whole(index, files, image, blob)


async def _whole(index: SqliteIndex, files: FileBlobStore, image: Image, digest: Digest) -> int:
    row = await index.blob(digest)
    if row is None or files.size_of(digest) != row.size:
        raise BundleError(f"{image.name}: {digest} is not whole in the store (pull it again)")
    return row.size


def _evicted(digest: Digest) -> BundleError:
    return BundleError(f"{digest} was evicted while exporting: pull it again, or export again")


def index_json(plan: Plan) -> bytes:
    manifests = []
    for image in plan.images:
        annotations = {NAME: image.name, REF: image.tag}
        if image.subject is not None:
            annotations = {SUBJECT: str(image.subject), "io.regcache.image": image.name}
        manifests.append({"mediaType": image.media_type, "digest": str(image.digest),
                          "size": image.size, "annotations": annotations})  # fmt: skip
    doc = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
           "manifests": manifests}  # fmt: skip
    return json.dumps(doc, indent=1).encode()


def bundle_json(plan: Plan, base_id: str | None, platforms: tuple[str, ...]) -> bytes:
    doc = {
        "version": 1, "id": str(uuid.uuid4()), "base": base_id,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "platforms": list(platforms), "images": len(plan.images), "blobs": len(plan.blobs),
        "bytes": plan.bytes, "omitted": [str(d) for d in plan.omitted],
    }  # fmt: skip
    return json.dumps(doc, indent=1).encode()


def write(
    plan: Plan,
    files: FileBlobStore,
    target: Path | BinaryIO,
    *,
    as_tar: bool,
    base_id: str | None,
    platforms: tuple[str, ...],
    progress: Progress | None = None,
) -> None:
    """The bundle, streamed (blocking: run it in a thread)."""
    with layout.Writer(target, as_tar=as_tar) as out:
        out.file(LAYOUT_FILE, layout.LAYOUT)
        out.file(BUNDLE_FILE, bundle_json(plan, base_id, platforms))
        out.file(INDEX_FILE, index_json(plan))
        for digest, size in plan.blobs.items():
            try:
                out.blob(digest, size, files.path_for(digest), progress)
            except FileNotFoundError:
                raise _evicted(digest) from None


def bundle_id(source: Path) -> str | None:
    """The id in a bundle's `regcache-bundle.json` (None: not a regcache bundle)."""
    for entry, data in layout.entries(source):
        if entry.name == BUNDLE_FILE:
            found = read_json(entry, data).get("id")
            return str(found) if found else None
        if entry.digest is not None:
            return None  # the JSON files come first
    return None


@dataclass(slots=True)
class Staged:
    """A bundle read and checked, its blobs in temp files of the store."""

    layout: bool = False
    bundle: dict[str, Any] = field(default_factory=dict)
    index: dict[str, Any] | None = None
    blobs: dict[Digest, tuple[TempBlob, int]] = field(default_factory=dict)
    """Each verified, fsynced and closed (no descriptor held while thousands wait)."""

    def discard(self, files: FileBlobStore) -> None:
        for temp, _ in self.blobs.values():
            files.discard(temp)
        self.blobs.clear()


def stage(source: Path | BinaryIO, files: FileBlobStore, progress: Progress | None) -> Staged:
    """Read a bundle whole, every blob verified into a temp file (blocking: run it in a
    thread). LayoutError or BundleError, with nothing left behind, if anything is wrong."""
    staged = Staged()
    try:
        for entry, data in layout.entries(source):
            if entry.digest is not None:
                if entry.digest not in staged.blobs:
                    staged.blobs[entry.digest] = (_copy(entry, data, files, progress), entry.size)
            elif entry.name == LAYOUT_FILE:
                staged.layout = read_json(entry, data).get("imageLayoutVersion") == "1.0.0"
            elif entry.name == BUNDLE_FILE:
                staged.bundle = read_json(entry, data)
                _check_base(staged.bundle, files)  # before the blobs: refused at once
            else:
                staged.index = read_json(entry, data)
        if not staged.layout or staged.index is None:
            raise BundleError("not an OCI image layout: no oci-layout 1.0.0 or no index.json")
        _check_base(staged.bundle, files)
    except BaseException:
        staged.discard(files)
        raise
    return staged


def _copy(entry: layout.Entry, data: BinaryIO, files: FileBlobStore, progress: Progress | None
          ) -> TempBlob:  # fmt: skip
    temp = files.create_temp()
    try:
        layout.copy_verified(entry, data, temp.write, progress)
        temp.seal()
    except BaseException:
        files.discard(temp)
        raise
    return temp


def read_json(entry: layout.Entry, data: BinaryIO) -> dict[str, Any]:
    try:
        doc = json.loads(layout.read_small(entry, data))
    except (ValueError, RecursionError) as e:
        raise LayoutError(f"{entry.name}: not JSON: {e}") from e
    if not isinstance(doc, dict):
        raise LayoutError(f"{entry.name}: not a JSON object")
    return doc


def _check_base(bundle: dict[str, Any], files: FileBlobStore) -> None:
    try:
        omitted = [Digest.parse(str(d)) for d in bundle.get("omitted") or ()]
    except DigestError as e:
        raise BundleError(f"{BUNDLE_FILE}: {e}") from e
    missing = [d for d in omitted if files.size_of(d) is None]
    if missing:
        raise BundleError(
            f"a delta bundle: it leaves out {len(omitted)} blobs its base {bundle.get('base')}"
            f" holds, and {len(missing)} are not in this store (the first: {missing[0]});"
            " import the base bundle first"
        )


def images_of(staged: Staged) -> list[Image]:
    """The named images and kept signatures `index.json` lists."""
    assert staged.index is not None
    out = []
    listed = staged.index.get("manifests")
    for n, descriptor in enumerate(listed if isinstance(listed, list) else ()):
        try:
            notes = dict(descriptor.get("annotations") or {})
            digest = Digest.parse(str(descriptor["digest"]))
            media_type, size = str(descriptor["mediaType"]), int(descriptor["size"])
            subject = Digest.parse(str(notes[SUBJECT])) if SUBJECT in notes else None
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise BundleError(f"{INDEX_FILE}: manifests[{n}]: {e!r}") from e
        name = str(notes.get(NAME) or notes.get("io.regcache.image") or "")
        if not name:
            raise BundleError(f"{INDEX_FILE}: manifests[{n}] ({digest}) has no {NAME}:"
                              " regcache cannot tell which registry it belongs to")  # fmt: skip
        out.append(Image(name, str(notes.get(REF, "")), digest, media_type, size, subject))
    return out


Found = dict[Digest, tuple[str, list[Digest], Image]]
"""Each manifest a bundle's images need: its media type, references, and whose it is."""
MAX_DEPTH = 4
"""Indexes in indexes this deep at most (an attestation index in an image index)."""


@dataclass(slots=True)
class Checked:
    """What an import needs: the manifests (`Found`), and every digest, blobs included."""

    manifests: Found = field(default_factory=dict)
    needed: set[Digest] = field(default_factory=set)


def complete(staged: Staged, files: FileBlobStore) -> Checked:
    """Every manifest the bundle's images name, each a manifest of the type and size
    `index.json` says, and all they need: in the bundle, or — a delta's base — in this
    store and listed in `omitted`. (A bundle may lean on the store only for what it says
    it left out: else it could name content the store holds for someone else and open
    it to every client under its own name.)"""
    checked = Checked()
    for image in images_of(staged):
        _check(staged, files, image, image.digest, (image.media_type, image.size), checked, 0)
    return checked


def _check(
    staged: Staged,
    files: FileBlobStore,
    image: Image,
    digest: Digest,
    said: tuple[str | None, int | None],
    checked: Checked,
    depth: int,
) -> None:
    if digest in checked.manifests:
        return
    if depth > MAX_DEPTH:
        raise BundleError(f"{image.name}: indexes nested deeper than {MAX_DEPTH}")
    body = _body(staged, files, image, digest)
    try:
        kind = oci.sniff_manifest_type(body)
        described = _descriptors(body) if kind in INDEX_TYPES else {}
    except (ValueError, RecursionError):
        kind = None
    if kind is None or (said[0] is not None and said[0] != kind):
        raise BundleError(f"{image.name}: {digest} is not a manifest of type {said[0]}"
                          f" (its bytes say {kind or 'no manifest at all'})")  # fmt: skip
    if said[1] is not None and said[1] != len(body):
        raise BundleError(f"{image.name}: {digest} is {len(body)} bytes, not {said[1]}")
    checked.manifests[digest] = (kind, oci.references(body), image)
    checked.needed.add(digest)
    if kind in INDEX_TYPES:
        platforms = tuple(staged.bundle.get("platforms") or ())
        for child, platform in oci.platform_manifests(body):
            if platforms and platform is not None and platform not in platforms:
                continue  # left out on export (`--platform`), as the bundle says
            _check(staged, files, image, child, described.get(child, (None, None)), checked,
                   depth + 1)  # fmt: skip
        return
    for blob in oci.fetchable_blobs(body):
        _present(staged, files, image, blob)
        checked.needed.add(blob)


def _present(staged: Staged, files: FileBlobStore, image: Image, digest: Digest) -> None:
    if digest in staged.blobs:
        return
    if str(digest) not in (staged.bundle.get("omitted") or ()):
        raise BundleError(f"{image.name}: {digest} is not in the bundle (and the bundle"
                          " does not say its base holds it)")  # fmt: skip
    if files.size_of(digest) is None:
        raise BundleError(f"{image.name}: {digest} is neither in the bundle nor in this store")


def _body(staged: Staged, files: FileBlobStore, image: Image, digest: Digest) -> bytes:
    _present(staged, files, image, digest)
    path = staged.blobs[digest][0].path if digest in staged.blobs else files.path_for(digest)
    if path.stat().st_size > MAX_MANIFEST:
        raise BundleError(f"{image.name}: {digest} is too big for a manifest")
    return path.read_bytes()


def _descriptors(body: bytes) -> dict[Digest, tuple[str | None, int | None]]:
    """An index's children as it describes them: (media type, size)."""
    out: dict[Digest, tuple[str | None, int | None]] = {}
    listed = json.loads(body).get("manifests")
    for d in listed if isinstance(listed, list) else ():
        if isinstance(d, dict):
            try:
                size = int(d["size"]) if "size" in d else None
                out[Digest.parse(str(d.get("digest")))] = (d.get("mediaType"), size)
            except (DigestError, TypeError, ValueError):
                continue  # `references` and `platform_manifests` pass over it as well
    return out


async def commit(
    staged: Staged,
    files: FileBlobStore,
    index: SqliteIndex,
    manifests: Found,
    source: Callable[[Image], tuple[str, str]],
) -> int:
    """Files into place, then their rows (a manifest with what it references and the
    (registry, repository) it came from); the bytes new to the store."""
    done = 0
    for digest, (temp, size) in list(staged.blobs.items()):
        done += size if files.size_of(digest) is None else 0
        await files.commit(temp, digest)
        del staged.blobs[digest]
        if digest in manifests:
            media_type, refs, image = manifests[digest]
            await index.add_manifest(digest, size, media_type, refs, source(image))
        else:
            await index.add_blob(digest, size, None)
    return done
