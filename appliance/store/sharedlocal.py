"""The local registry's content shared by several gateways through the bucket (issue
#19): an image pushed to one gateway is pulled from any, under the same name.

- Each manifest pushed to a local repository is one record,
  `local/manifests/<repository>/<digest>` (its rows, the blobs it names with their
  sizes), and each tag one record, `local/tags/<repository>/<tag>`; the bytes are the
  tier's own objects (`blobs/…`, `manifests/…`), uploaded before the manifest's record.
- `converge` (every few seconds, and soon after a push or delete here) publishes what
  this gateway holds that the bucket lacks, and imports what the others published: the
  blobs (downloaded, verified, stored) and referenced manifests first, then the
  manifest, then its tags, so a gateway never serves a manifest whose content it lacks.
  Every gateway keeps its own copy and serves the local registry alone when needed.
- A delete leaves a tombstone (digest null, or `deleted`; a manifest's tags go with
  it), kept in `pending` until written, across restarts too. Each record
  carries the time of the push or delete on the gateway that made it, kept as the row's
  time when imported: of two records for one tag, the later wins everywhere (two pushes
  of one tag at once on two gateways end as the one made last, as on one registry; it
  relies on the gateways' clocks agreeing to better than the time between them).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from appliance.cache.manifests import MAX_MANIFEST_BYTES
from appliance.cache.ports import BlobFiles
from appliance.kit.logfields import fields
from appliance.kit.tasks import to_thread_to_end
from appliance.local.ports import LocalManifest
from appliance.oci.digest import Digest, DigestError
from appliance.store.index import SqliteIndex
from appliance.store.s3 import Bucket, Conflict
from appliance.store.tier import blob_name, manifest_name

log = logging.getLogger(__name__)

TAGS, MANIFESTS = "local/tags/", "local/manifests/"
_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class TagRecord:
    repository: str
    tag: str
    digest: Digest | None
    """None: deleted."""
    at: float

    def name(self) -> str:
        return f"{TAGS}{self.repository}/{self.tag}"

    def encode(self, gateway: str) -> bytes:
        return json.dumps({"repository": self.repository, "tag": self.tag, "at": self.at,
                           "digest": _text(self.digest), "gateway": gateway}).encode()  # fmt: skip


@dataclass(frozen=True, slots=True)
class ManifestRecord:
    repository: str
    manifest: LocalManifest
    references: tuple[Digest, ...]
    blobs: tuple[tuple[Digest, int], ...]
    """The blobs it names that are the repository's, with their sizes."""
    at: float
    deleted: bool = False

    def name(self) -> str:
        return f"{MANIFESTS}{self.repository}/{self.manifest.digest}"

    def encode(self, gateway: str) -> bytes:
        m = self.manifest
        return json.dumps({
            "repository": self.repository, "digest": str(m.digest), "media_type": m.media_type,
            "size": m.size, "artifact_type": m.artifact_type, "annotations": m.annotations,
            "subject": _text(m.subject), "references": [str(d) for d in self.references],
            "blobs": [[str(d), size] for d, size in self.blobs], "at": self.at,
            "deleted": self.deleted, "gateway": gateway,
        }).encode()  # fmt: skip


def decode(data: bytes) -> TagRecord | ManifestRecord:
    """A record's object; ValueError (or KeyError, DigestError) if it is not one."""
    raw = json.loads(data)
    if "tag" in raw:
        digest = Digest.parse(raw["digest"]) if raw["digest"] else None
        return TagRecord(str(raw["repository"]), str(raw["tag"]), digest, float(raw["at"]))
    subject = Digest.parse(raw["subject"]) if raw.get("subject") else None
    manifest = LocalManifest(Digest.parse(raw["digest"]), str(raw["media_type"]),
                             int(raw["size"]), raw.get("artifact_type"),
                             raw.get("annotations"), subject)  # fmt: skip
    return ManifestRecord(
        str(raw["repository"]), manifest, tuple(Digest.parse(d) for d in raw["references"]),
        tuple((Digest.parse(d), int(size)) for d, size in raw["blobs"]), float(raw["at"]),
        bool(raw.get("deleted", False)),
    )  # fmt: skip


@dataclass(slots=True)
class Converged:
    published: int = 0
    imported: int = 0
    deleted: int = 0

    def __bool__(self) -> bool:
        return bool(self.published + self.imported + self.deleted)


class SharedLocal:
    """The local registry's rows here and its records in the bucket, kept alike; also
    the `LocalReplica` the registry tells of its deletes (and pushes)."""

    def __init__(
        self, index: SqliteIndex, files: BlobFiles, bucket: Bucket, gateway: str,
        *, source: str, part_bytes: int = 16 << 20, pending: Path | None = None,
    ) -> None:  # fmt: skip
        self._index = index
        self._files = files
        self._bucket = bucket
        self._gateway = gateway
        self._source = source
        """The local registry's name (`cache ls`), for the rows imported here."""
        self._part_bytes = part_bytes
        self._pending = pending
        """Where the deletes not yet written are kept across restarts (a JSON list)."""
        self._tombstones: list[TagRecord | ManifestRecord] = _load(pending)
        """Deletes made here, until written to the bucket."""
        self._seen: dict[str, tuple[str, TagRecord | ManifestRecord]] = {}
        """Records read before, by name: (ETag, record), so only changed ones are read."""
        self.nudged = asyncio.Event()
        """Set by a push or delete here: converge soon."""

    # What the registry tells (`LocalReplica`).

    def changed(self) -> None:
        self.nudged.set()

    def tag_deleted(self, repository: str, tag: str) -> None:
        self._tombstones.append(TagRecord(repository, tag, None, time.time()))
        self._save()

    def manifest_deleted(self, repository: str, digest: Digest, tags: Iterable[str]) -> None:
        now = time.time()
        gone = LocalManifest(digest, "", 0)
        self._tombstones.append(ManifestRecord(repository, gone, (), (), now, deleted=True))
        self._tombstones += [TagRecord(repository, tag, None, now) for tag in tags]
        self._save()

    def _save(self) -> None:
        """The pending deletes to disk (small; written at once), then converge soon."""
        self.nudged.set()
        if self._pending is None:
            return
        data = json.dumps([json.loads(r.encode(self._gateway)) for r in self._tombstones])
        temp = self._pending.with_name(self._pending.name + ".tmp")
        temp.write_text(data, encoding="utf-8")
        os.replace(temp, self._pending)

    # Convergence.

    async def converge(self) -> Converged:
        """Write the deletes made here, then bring bucket and rows alike (see the module
        docstring). BucketUnavailable/BucketRefused: try again later; nothing is lost."""
        done = Converged()
        while self._tombstones:
            await self._write(self._tombstones[0])
            self._tombstones.pop(0)
            self._save()
        # This gateway's rows first: a delete made here while the bucket is read must
        # not look like a record this gateway lacks (it would be imported back).
        manifests = await self._index.local_manifest_times()
        tags = await self._index.local_tag_times()
        records = await self._records()
        await self._apply(records, manifests, tags, done)
        published = {(r.repository, r.manifest.digest) for r in records
                     if isinstance(r, ManifestRecord)}  # fmt: skip
        for repository, digest in sorted(manifests.keys() - published):
            await self._publish_manifest(repository, digest, manifests[(repository, digest)])
            done.published += 1
        named = {(r.repository, r.tag) for r in records if isinstance(r, TagRecord)}
        for (repository, tag), (digest, at) in sorted(tags.items()):
            if (repository, tag) not in named:
                await self._write(TagRecord(repository, tag, digest, at))
                done.published += 1
        return done

    async def _apply(
        self,
        records: list[TagRecord | ManifestRecord],
        manifests: dict[tuple[str, Digest], float],
        tags: dict[tuple[str, str], tuple[Digest, float]],
        done: Converged,
    ) -> None:
        """The bucket's records, manifests first, then the tags naming them."""
        gone = {(r.repository, r.manifest.digest): r.at for r in records
                if isinstance(r, ManifestRecord) and r.deleted}  # fmt: skip
        for record in records:
            if isinstance(record, ManifestRecord):
                await self._manifest(record, manifests, done)
        for record in records:
            if isinstance(record, TagRecord):
                now = self._unless_gone(record, gone)
                if now != record:  # its manifest's delete is the tag's too, everywhere
                    await self._write(now)
                    done.published += 1
                await self._tag(now, tags, done)

    def _unless_gone(self, record: TagRecord, gone: dict[tuple[str, Digest], float]) -> TagRecord:
        """The tag as a delete if its manifest was deleted after it was tagged (by a
        gateway that did not know the tag): it must not come back with the manifest."""
        deleted_at = gone.get((record.repository, record.digest)) if record.digest else None
        if deleted_at is None or deleted_at < record.at:
            return record
        return TagRecord(record.repository, record.tag, None, deleted_at)

    async def _manifest(
        self, record: ManifestRecord, here: dict[tuple[str, Digest], float], done: Converged
    ) -> None:
        key = (record.repository, record.manifest.digest)
        at_here = here.get(key)
        if record.deleted:
            if at_here is not None and at_here < record.at:
                await self._index.delete_local_manifest(*key, self._source)
                done.deleted += 1
            elif at_here is not None:  # pushed here again since: ours stands
                await self._publish_manifest(*key, at_here)
                done.published += 1
        elif at_here is None and await self._import(record):
            here[key] = record.at
            done.imported += 1

    async def _tag(
        self, record: TagRecord, here: dict[tuple[str, str], tuple[Digest, float]],
        done: Converged,
    ) -> None:  # fmt: skip
        mine = here.get((record.repository, record.tag))
        if (mine[0] if mine else None) == record.digest:
            return
        if mine is not None and mine[1] > record.at:  # moved here since: ours stands
            await self._write(TagRecord(record.repository, record.tag, *mine))
            done.published += 1
        elif record.digest is None:
            await self._index.delete_local_tag(record.repository, record.tag)
            done.deleted += 1
        else:
            found = await self._index.local_manifest(record.repository, record.digest)
            if found is None:
                return  # its manifest is not imported yet (its blobs): next time
            references = await self._index.references_of(record.digest)
            await self._index.put_local_manifest(
                record.repository, found, references, record.tag, self._source, at=record.at
            )
            done.imported += 1

    async def _records(self) -> list[TagRecord | ManifestRecord]:
        out: list[TagRecord | ManifestRecord] = []
        for prefix in (MANIFESTS, TAGS):
            async for item in self._bucket.listing(prefix):
                seen = self._seen.get(item.name)
                if seen is not None and seen[0] == item.etag:
                    out.append(seen[1])
                    continue
                body = await self._bucket.get(item.name)
                if body is None:
                    continue  # removed since the listing
                try:
                    record = decode(await body.read())
                except (ValueError, KeyError, TypeError, DigestError) as e:
                    log.warning("local share-record-bad %s", fields(name=item.name, error=e))
                    continue
                finally:
                    body.close()
                self._seen[item.name] = (body.etag, record)
                out.append(record)
        return out

    async def _write(self, record: TagRecord | ManifestRecord) -> None:
        await self._bucket.put(record.name(), record.encode(self._gateway),
                               content_type="application/json")  # fmt: skip

    # Publishing: the bytes first, then the record that names them.

    async def _publish_manifest(self, repository: str, digest: Digest, at: float) -> None:
        manifest = await self._index.local_manifest(repository, digest)
        if manifest is None:
            return
        references = await self._index.references_of(digest)
        blobs = []
        for reference in references:
            size = await self._index.local_blob(repository, reference)
            if size is not None:
                blobs.append((reference, size))
                await self._upload(blob_name(reference), self._files.path_for(reference))
        await self._upload(manifest_name(digest), self._files.path_for(digest),
                           content_type=manifest.media_type)  # fmt: skip
        await self._write(ManifestRecord(repository, manifest, tuple(references), tuple(blobs), at))
        log.info("local shared %s", fields(repository=repository, digest=digest))

    async def _upload(self, name: str, path: Path, content_type: str | None = None) -> None:
        if await self._bucket.head(name) is not None:
            return  # there already: content-addressed
        size = (await asyncio.to_thread(path.stat)).st_size
        try:
            if size <= self._part_bytes:
                data = await asyncio.to_thread(path.read_bytes)
                await self._bucket.put(name, data, if_absent=True, content_type=content_type)
            else:
                await self._upload_parts(name, path)
        except Conflict:
            return  # another gateway's copy came first: the same bytes

    async def _upload_parts(self, name: str, path: Path) -> None:
        """A multipart upload, a part in memory at a time, read from the file."""
        upload = await self._bucket.start_upload(name)
        try:
            etags: list[str] = []
            with path.open("rb") as file:
                while part := await asyncio.to_thread(file.read, self._part_bytes):
                    number = len(etags) + 1
                    etags.append(await self._bucket.upload_part(name, upload, number, part))
            await self._bucket.complete_upload(name, upload, etags)
        except BaseException:
            await self._bucket.abort_upload(name, upload)
            raise

    # Importing: blobs, then the manifest; each verified against its digest.

    async def _import(self, record: ManifestRecord) -> bool:
        """Whether the manifest and its blobs are stored here now (False: the bucket
        lacks some of them, they did not verify, or a manifest it references is not
        here yet; tried again next time)."""
        blobs = {digest for digest, _ in record.blobs}
        for reference in record.references:
            if (
                reference not in blobs
                and await self._index.local_manifest(record.repository, reference) is None
            ):
                return False
        for digest, size in record.blobs:
            if self._files.size_of(digest) != size and not await self._download(
                blob_name(digest), digest, size
            ):
                return False
            await self._index.add_local_blob(record.repository, digest, size)
        m = record.manifest
        if m.size > MAX_MANIFEST_BYTES or not await self._download(
            manifest_name(m.digest), m.digest, m.size
        ):
            return False
        await self._index.put_local_manifest(record.repository, m, record.references, None,
                                             self._source, at=record.at)  # fmt: skip
        log.info("local imported %s", fields(repository=record.repository, digest=m.digest))
        return True

    async def _download(self, name: str, digest: Digest, size: int) -> bool:
        body = await self._bucket.get(name)
        if body is None:
            return False
        temp = self._files.create_temp()
        verifier = digest.verifier()
        written = 0
        try:
            async for chunk in body.chunks(_CHUNK_BYTES):
                written += len(chunk)
                if written > size:
                    break  # longer than the record says: not the blob
                verifier.update(chunk)
                await to_thread_to_end(temp.write, chunk)
            if written != size or not verifier.matches():
                log.warning("local share-object-bad %s", fields(name=name, bytes=written))
                self._files.discard(temp)
                return False
            await self._files.commit(temp, digest)
        except BaseException:
            self._files.discard(temp)
            raise
        finally:
            body.close()
        return True


def _text(digest: Digest | None) -> str | None:
    return None if digest is None else str(digest)


def _load(pending: Path | None) -> list[TagRecord | ManifestRecord]:
    """The deletes a previous run could not write yet (an unreadable file: logged)."""
    if pending is None or not pending.exists():
        return []
    try:
        return [decode(json.dumps(raw).encode()) for raw in json.loads(pending.read_text())]
    except (OSError, ValueError, KeyError, TypeError, DigestError) as e:
        log.warning("local share-pending-unreadable %s", fields(path=pending, error=e))
        return []
