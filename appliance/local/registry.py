"""The local registry's operations, as the distribution spec defines them: blobs pushed
(monolithic, chunked, mounted) and pulled, manifests put, pulled and deleted, tags
listed, referrers found by their `subject`. Everything is regcache's own: no upstream is
ever asked, so it all works with upstream down. Runs on the cache's loop (the index's).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from appliance.cache.answers import Stored
from appliance.cache.ports import BlobFiles, SpaceKeeper, Unbounded
from appliance.kit.logfields import fields
from appliance.local.ports import (
    LocalError,
    LocalIndex,
    LocalManifest,
    LocalReplica,
    LocalUsage,
)
from appliance.local.uploads import LocalUploads, Session
from appliance.oci.digest import Digest, DigestError
from appliance.oci.manifest import sniff_manifest_type
from appliance.oci.mediatypes import INDEX_TYPES, MANIFEST_TYPES, OCI_INDEX, OCTET_STREAM

log = logging.getLogger(__name__)

MAX_MANIFEST_BYTES = 4 << 20
_CHECKED = {"config": False, "layers": False, "blobs": False, "manifests": True}
"""Descriptor fields whose targets must be in the repository (True: as manifests)."""


@dataclass(frozen=True, slots=True)
class Reply:
    """An answer without a stored body."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    content_type: str | None = None


def manifest_unknown(repository: str, reference: str | Digest) -> LocalError:
    return LocalError(404, "MANIFEST_UNKNOWN", f"{repository}:{reference} is not known here")


class LocalRegistry:
    def __init__(
        self,
        index: LocalIndex,
        files: BlobFiles,
        uploads: LocalUploads,
        name: str,
        space: SpaceKeeper | None = None,
        replica: LocalReplica | None = None,
    ) -> None:
        self._index = index
        self.replica = replica
        """Told of pushes and deletes (several gateways sharing the registry)."""
        self._files = files
        self.uploads = uploads
        self.name = name
        """What `cache ls` calls the local registry (its first host name)."""
        self._space = space or Unbounded()
        self.usage = LocalUsage(0, 0, 0, 0, 0)
        """What it holds, as of the last `refresh`: metrics and status read it."""
        self.changes = 0
        """Changes so far: the background job refreshes `usage` and saves the journal
        when it grew (not each push: the figures are a scan of the local rows)."""

    async def refresh(self) -> LocalUsage:
        self.usage = await self._index.local_usage()
        return self.usage

    # Pulls.

    async def blob(self, repository: str, digest: Digest) -> Stored:
        size = await self._index.local_blob(repository, digest)
        if size is None or self._files.size_of(digest) != size:
            raise LocalError(404, "BLOB_UNKNOWN", f"{digest} is not in {repository}")
        return Stored(digest, size, OCTET_STREAM, self._files.path_for(digest))

    async def manifest(self, repository: str, reference: str | Digest) -> Stored:
        digest = reference if isinstance(reference, Digest) else (
            await self._index.local_tag(repository, reference))  # fmt: skip
        if digest is None:
            raise manifest_unknown(repository, reference)
        found = await self._index.local_manifest(repository, digest)
        if found is None or self._files.size_of(digest) != found.size:
            raise manifest_unknown(repository, reference)
        return Stored(digest, found.size, found.media_type, self._files.path_for(digest))

    # Blob uploads.

    async def start_upload(
        self,
        repository: str,
        digest: Digest | None,
        body: AsyncIterator[bytes] | None,
        mount: tuple[Digest, str] | None = None,
    ) -> Reply:
        """POST: a mount (201) when the source repository has the blob, a whole blob with
        `digest` (201), else a new upload (202)."""
        if mount is not None:
            size = await self._index.local_blob(mount[1], mount[0])
            if size is not None and self._files.size_of(mount[0]) == size:
                await self._index.add_local_blob(repository, mount[0], size)
                self.changes += 1
                return _blob_created(repository, mount[0])
        session = self.uploads.start(repository)
        try:
            if digest is None:
                return _upload_reply(202, session)
            if body is not None:
                await self.uploads.feed(session, body)
            return await self._commit(session, digest)
        except BaseException as e:  # a one-request push that failed: nobody can go on
            self.uploads.abandon(session, f"single-request push failed: {type(e).__name__}")
            raise
        finally:
            self.uploads.release(session)

    async def patch(
        self, repository: str, name: str, offset: int | None, body: AsyncIterator[bytes]
    ) -> Reply:
        session = self.uploads.claim(repository, name)
        try:
            if offset is not None and offset != session.size:
                raise LocalError(416, "BLOB_UPLOAD_INVALID", f"the chunk starts at {offset},"
                                 f" the upload holds {session.size} bytes",
                                 _upload_headers(session))  # fmt: skip
            await self.uploads.feed(session, body)
            return _upload_reply(202, session)
        finally:
            self.uploads.release(session)

    async def finish(
        self, repository: str, name: str, digest: Digest, body: AsyncIterator[bytes] | None
    ) -> Reply:
        session = self.uploads.claim(repository, name)
        try:
            if body is not None:
                await self.uploads.feed(session, body)
            return await self._commit(session, digest)
        finally:
            self.uploads.release(session)

    async def upload_status(self, repository: str, name: str) -> Reply:
        return _upload_reply(204, self.uploads.status(repository, name))

    async def cancel(self, repository: str, name: str) -> Reply:
        self.uploads.cancel(repository, name)
        return Reply(204)

    async def _commit(self, session: Session, digest: Digest) -> Reply:
        size = await self.uploads.commit(session, digest)
        await self._index.add_local_blob(session.repository, digest, size)
        self._space.nudge(added=size)
        self.changes += 1
        log.info("local blob-pushed %s", fields(repository=session.repository, digest=digest,
                                                bytes=size))  # fmt: skip
        return _blob_created(session.repository, digest)

    # Manifests.

    async def put_manifest(
        self, repository: str, reference: str | Digest, content_type: str, body: bytes
    ) -> Reply:
        if len(body) > MAX_MANIFEST_BYTES:
            raise LocalError(413, "SIZE_INVALID", f"a manifest may be {MAX_MANIFEST_BYTES}"
                             " bytes at most")  # fmt: skip
        algorithm = reference.algorithm if isinstance(reference, Digest) else "sha256"
        digest = Digest.of(body, algorithm)
        if isinstance(reference, Digest) and digest != reference:
            raise LocalError(400, "DIGEST_INVALID", f"the manifest hashes to {digest}")
        doc = _document(body)
        media_type = _media_type(content_type, doc, body)
        await self._check_references(repository, doc, media_type)
        subject = _subject(doc)
        manifest = LocalManifest(digest, media_type, len(body), _artifact_type(doc),
                                 _annotations(doc), subject)  # fmt: skip
        temp = self._files.create_temp()  # written even over a stored copy, as a blob is
        try:
            temp.write(body)
            path = await self._files.commit(temp, digest)
        except BaseException:
            self._files.discard(temp)
            raise
        tag = None if isinstance(reference, Digest) else reference
        await self._index.put_local_manifest(repository, manifest, _children(doc), tag, self.name)
        self._space.nudge(added=len(body))
        self.changes += 1
        if self.replica is not None:
            self.replica.changed()
        log.info("local manifest-pushed %s", fields(repository=repository, digest=digest,
                                                    tag=tag, path=path.name))  # fmt: skip
        headers = {"Location": f"/v2/{repository}/manifests/{digest}",
                   "Docker-Content-Digest": str(digest)}  # fmt: skip
        if subject is not None:
            headers["OCI-Subject"] = str(subject)
        return Reply(201, headers)

    async def _check_references(
        self, repository: str, doc: dict[str, Any], media_type: str
    ) -> None:
        for key, is_manifest in _CHECKED.items():
            value = doc.get(key)
            descriptors = [value] if isinstance(value, dict) else value
            for descriptor in descriptors if isinstance(descriptors, list) else ():
                if not isinstance(descriptor, dict) or descriptor.get("urls"):
                    continue  # foreign layers are fetched from elsewhere
                digest = _descriptor_digest(descriptor)
                if is_manifest:
                    ok = await self._index.local_manifest(repository, digest) is not None
                else:
                    ok = await self._index.local_blob(repository, digest) is not None
                if not ok:
                    raise LocalError(400, "MANIFEST_BLOB_UNKNOWN", f"{key} names {digest},"
                                     f" which is not in {repository}: push it first")  # fmt: skip
        if media_type in INDEX_TYPES and "layers" in doc:
            raise LocalError(400, "MANIFEST_INVALID", "an index has no layers")

    async def delete_manifest(self, repository: str, reference: str | Digest) -> Reply:
        if not isinstance(reference, Digest):
            if not await self._index.delete_local_tag(repository, reference):
                raise manifest_unknown(repository, reference)
            log.info("local tag-deleted %s", fields(repository=repository, tag=reference))
            self.changes += 1
            if self.replica is not None:
                self.replica.tag_deleted(repository, reference)
            return Reply(202)
        tags = await self._index.delete_local_manifest(repository, reference, self.name)
        if tags is None:
            raise manifest_unknown(repository, reference)
        log.info("local manifest-deleted %s", fields(repository=repository, digest=reference,
                                                     tags=",".join(tags)))  # fmt: skip
        self.changes += 1
        if self.replica is not None:
            self.replica.manifest_deleted(repository, reference, tags)
        return Reply(202)

    async def delete_blob(self, repository: str, digest: Digest) -> Reply:
        if not await self._index.delete_local_blob(repository, digest):
            raise LocalError(404, "BLOB_UNKNOWN", f"{digest} is not in {repository}")
        self.changes += 1
        return Reply(202)

    # Content discovery.

    async def tags(self, repository: str, n: int | None, last: str | None) -> Reply:
        tags = await self._index.local_tags(repository)
        if tags is None:
            raise LocalError(404, "NAME_UNKNOWN", f"no repository {repository!r} here")
        page, more = _page(tags, n, last)
        headers = {}
        if more and page:
            headers["Link"] = f'</v2/{repository}/tags/list?n={n}&last={page[-1]}>; rel="next"'
        return _json(200, {"name": repository, "tags": page}, headers)

    async def repositories(self) -> list[str]:
        return await self._index.local_repositories()

    async def catalog(self, readable: list[str], n: int | None, last: str | None) -> Reply:
        page, more = _page(readable, n, last)
        headers = {}
        if more and page:
            headers["Link"] = f'</v2/_catalog?n={n}&last={page[-1]}>; rel="next"'
        return _json(200, {"repositories": page}, headers)

    async def referrers(self, repository: str, subject: Digest, artifact_type: str | None) -> Reply:
        found = await self._index.local_referrers(repository, subject)
        if artifact_type is not None:
            found = [m for m in found if m.artifact_type == artifact_type]
        descriptors = [_descriptor(m) for m in found]
        headers = {"OCI-Filters-Applied": "artifactType"} if artifact_type is not None else {}
        body = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descriptors}
        return _json(200, body, headers, OCI_INDEX)


def _json(
    status: int, body: object, headers: dict[str, str], content_type: str = "application/json"
) -> Reply:
    return Reply(status, headers, json.dumps(body).encode(), content_type)


def _page(names: list[str], n: int | None, last: str | None) -> tuple[list[str], bool]:
    """Names after `last` (lexically), at most `n` of them; whether more follow."""
    after = [t for t in names if last is None or t > last]
    if n is None:
        return after, False
    return after[:n], len(after) > n


def _blob_created(repository: str, digest: Digest) -> Reply:
    return Reply(201, {"Location": f"/v2/{repository}/blobs/{digest}",
                       "Docker-Content-Digest": str(digest)})  # fmt: skip


def _upload_headers(session: Session) -> dict[str, str]:
    return {
        "Location": f"/v2/{session.repository}/blobs/uploads/{session.name}",
        "Range": f"0-{max(session.size - 1, 0)}",
        "Docker-Upload-UUID": session.name,
    }


def _upload_reply(status: int, session: Session) -> Reply:
    return Reply(status, _upload_headers(session))


def _document(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise LocalError(400, "MANIFEST_INVALID", f"not JSON: {e}") from e
    if not isinstance(doc, dict):
        raise LocalError(400, "MANIFEST_INVALID", "a manifest is a JSON object")
    return doc


def _media_type(content_type: str, doc: dict[str, Any], body: bytes) -> str:
    """The type the manifest goes by: as pushed, which its own `mediaType` must agree with."""
    declared = doc.get("mediaType")
    given = content_type.split(";", 1)[0].strip()
    if given in ("", "application/json", OCTET_STREAM):
        given = str(declared) if declared else (sniff_manifest_type(body) or "")
    if not given:
        raise LocalError(400, "MANIFEST_INVALID", "no Content-Type and no mediaType")
    if declared is not None and declared != given:
        raise LocalError(400, "MANIFEST_INVALID",
                         f"Content-Type {given} but mediaType {declared}")  # fmt: skip
    if given not in MANIFEST_TYPES and not given.startswith("application/"):
        raise LocalError(400, "MANIFEST_INVALID", f"{given!r} is not a manifest type")
    return given


def _descriptor_digest(descriptor: dict[str, Any]) -> Digest:
    try:
        return Digest.parse(str(descriptor.get("digest", "")))
    except DigestError as e:
        raise LocalError(400, "MANIFEST_INVALID", f"a descriptor's digest: {e}") from e


def _children(doc: dict[str, Any]) -> list[Digest]:
    """What the manifest needs kept (config, layers, blobs, child manifests)."""
    out: dict[Digest, None] = {}
    for key in ("config", "layers", "blobs", "manifests"):
        value = doc.get(key)
        for d in [value] if isinstance(value, dict) else value if isinstance(value, list) else ():
            if isinstance(d, dict) and not d.get("urls"):
                out[_descriptor_digest(d)] = None
    return list(out)


def _subject(doc: dict[str, Any]) -> Digest | None:
    subject = doc.get("subject")
    return _descriptor_digest(subject) if isinstance(subject, dict) else None


def _artifact_type(doc: dict[str, Any]) -> str | None:
    declared = doc.get("artifactType")
    if isinstance(declared, str):
        return declared
    config = doc.get("config")
    media_type = config.get("mediaType") if isinstance(config, dict) else None
    return str(media_type) if media_type else None


def _annotations(doc: dict[str, Any]) -> str | None:
    value = doc.get("annotations")
    return json.dumps(value) if isinstance(value, dict) else None


def _descriptor(m: LocalManifest) -> dict[str, Any]:
    out: dict[str, Any] = {"mediaType": m.media_type, "digest": str(m.digest), "size": m.size}
    if m.artifact_type:
        out["artifactType"] = m.artifact_type
    if m.annotations:
        out["annotations"] = json.loads(m.annotations)
    return out
