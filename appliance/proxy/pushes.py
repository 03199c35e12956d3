"""Pushes passing through, kept on the way (write-through, `cache/uploads.py`): which step
of a push a request is, what its body is teed into, and what is done once upstream has
answered it. Every step but the tee runs on the cache's loop (`Bridge.run`), where the
upload sessions live; the tee runs there too, as upstream's client reads the body."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from multidict import CIMultiDict
from yarl import URL

from appliance.cache.uploads import MAX_MANIFEST_BYTES, Upload, Uploads
from appliance.oci.digest import Digest, DigestError
from appliance.oci.manifest import sniff_manifest_type
from appliance.oci.mediatypes import MANIFEST_TYPES
from appliance.oci.names import InvalidName, check_repository, parse_reference
from appliance.proxy.loops import Bridge

log = logging.getLogger(__name__)

_UPLOAD = re.compile(r"/v2/(?P<name>.+)/blobs/uploads/(?P<uuid>[^/]*)", re.S)
_MANIFEST = re.compile(r"/v2/(?P<name>.+)/manifests/(?P<ref>[^/]+)", re.S)

StepKind = Literal["start", "continue", "finish", "cancel", "manifest"]


@dataclass(frozen=True, slots=True)
class Step:
    kind: StepKind
    repository: str
    uuid: str = ""
    digest: Digest | None = None
    """`?digest=` of an upload step; a manifest PUT's reference if it is a digest."""
    offset: int | None = None
    """Where a PATCH's Content-Range says its bytes start."""
    media_type: str = ""
    """A manifest PUT's Content-Type."""
    tag: str | None = None
    """A manifest PUT's reference if it is a tag."""


def push_step(
    method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str]
) -> Step | None:
    """The push step a request is, or None (a read, not a push, a bad name)."""
    try:
        return _step(method, path, query, headers)
    except (InvalidName, DigestError, ValueError):
        return None


def _step(
    method: str, path: str, query: Mapping[str, str], headers: Mapping[str, str]
) -> Step | None:
    if method == "PUT" and (found := _MANIFEST.fullmatch(path)) is not None:
        reference = parse_reference(found.group("ref"))
        digest = reference if isinstance(reference, Digest) else None
        media_type = headers.get("Content-Type", "").split(";", 1)[0].strip()
        return Step("manifest", check_repository(found.group("name")), digest=digest,
                    media_type=media_type, tag=None if digest else str(reference))  # fmt: skip
    found = _UPLOAD.fullmatch(path)
    if found is None:
        return None
    repository, uuid = check_repository(found.group("name")), found.group("uuid")
    digest = Digest.parse(query["digest"]) if "digest" in query else None
    if method == "POST" and not uuid:  # a mount too: answered 202, it is an upload
        return Step("start", repository, digest=None if "mount" in query else digest)
    if method == "PATCH" and uuid:
        start = headers.get("Content-Range", "").split("-", 1)[0].strip()
        return Step("continue", repository, uuid, offset=int(start) if start else None)
    if method == "PUT" and uuid and digest is not None:
        return Step("finish", repository, uuid, digest)
    if method == "DELETE" and uuid:
        return Step("cancel", repository, uuid)
    return None


@dataclass(slots=True)
class Keeping:
    """One push step on its way: the upload it feeds, or a manifest's bytes."""

    step: Step
    host: str
    uploads: Uploads
    upload: Upload | None = None
    body: bytearray = field(default_factory=bytearray)
    too_big: bool = False
    done: bool = False
    """Upstream's answer was dealt with (`Pushes.answered`)."""

    def wrap(self) -> Callable[[AsyncIterator[bytes]], AsyncIterator[bytes]]:
        """What the request's body goes through on its way upstream."""
        if self.upload is not None:
            upload = self.upload
            return lambda chunks: self.uploads.tee(upload, chunks)
        return self._buffered

    async def _buffered(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            if self.step.kind == "manifest" and not self.too_big:
                self.body += chunk
                self.too_big = len(self.body) > MAX_MANIFEST_BYTES
            yield chunk


class Pushes:
    def __init__(self, uploads: Uploads, bridge: Bridge) -> None:
        self._uploads = uploads
        self._bridge = bridge

    async def begin(self, step: Step, host: str) -> Keeping:
        return await self._bridge.run(self._begin(step, host))

    async def _begin(self, step: Step, host: str) -> Keeping:
        keeping = Keeping(step, host, self._uploads)
        if step.kind == "start":
            keeping.upload = self._uploads.begin()
        elif step.kind in ("continue", "finish"):
            upload = self._uploads.claim((host, step.repository, step.uuid))
            if upload is not None and step.offset not in (None, upload.size):
                upload.broken = f"a PATCH from byte {step.offset}, {upload.size} seen"
            keeping.upload = upload
        return keeping

    async def answered(
        self, keeping: Keeping, status: int, headers: Mapping[str, str], authorization: str | None
    ) -> None:
        """Upstream's answer to the step (0: none came): keep, continue or drop. Never
        raises for the push's sake: what goes wrong here only means nothing is kept."""
        copied = CIMultiDict(headers)  # read on the cache's loop, after this one moved on
        try:
            await self._bridge.run(self._answered(keeping, status, copied, authorization))
        finally:
            keeping.done = True

    async def _answered(
        self, keeping: Keeping, status: int, headers: Mapping[str, str], authorization: str | None
    ) -> None:
        upload = keeping.upload
        try:
            if keeping.step.kind == "manifest":
                await self._manifest(keeping, status, headers, authorization)
            else:
                await self._settle(keeping, status, headers, authorization)
        except Exception:
            log.exception("push settle-failed step=%s", keeping.step.kind)
            if upload is not None:
                upload.broken = upload.broken or "settling failed"
        finally:
            if upload is not None:
                self._uploads.release(upload)

    async def _settle(
        self, keeping: Keeping, status: int, headers: Mapping[str, str], authorization: str | None
    ) -> None:
        """An upload step's answer: the blob kept (201 to a closing step), the session
        continued (202 naming it) or ended."""
        step, uploads, upload = keeping.step, self._uploads, keeping.upload
        key = (keeping.host, step.repository, step.uuid)
        if step.kind == "cancel" or (step.kind == "continue" and not 200 <= status < 300):
            uploads.forget(key)
        if upload is None:
            return
        uuid = _uuid(headers.get("Location", ""))
        if status == 201 and step.digest is not None and step.kind in ("start", "finish"):
            place = (keeping.host, step.repository)
            await uploads.finish(upload, step.digest, place, authorization)
        elif status == 202 and uuid and step.kind in ("start", "continue"):
            if step.digest is not None:  # a monolithic POST upstream did not take whole:
                upload.broken = "upstream asked for the body again"  # the PUT brings it
                uploads.register((keeping.host, step.repository, uuid), fresh := uploads.begin())
                uploads.release(fresh)
            else:
                uploads.register((keeping.host, step.repository, uuid), upload)
        else:
            uploads.forget(key)
            upload.broken = upload.broken or f"upstream answered {status}"

    async def _manifest(
        self, keeping: Keeping, status: int, headers: Mapping[str, str], authorization: str | None
    ) -> None:
        if status != 201 or keeping.too_big or not keeping.body:
            return
        body = bytes(keeping.body)
        announced = headers.get("Docker-Content-Digest", "")
        try:  # upstream accepted these very bytes: their digest is what it stored
            digest = keeping.step.digest or (Digest.parse(announced) if announced else
                                             Digest.of(body))  # fmt: skip
        except DigestError:
            return
        media_type = keeping.step.media_type
        if media_type not in MANIFEST_TYPES:
            media_type = sniff_manifest_type(body) or ""
        if media_type:
            step = keeping.step
            await self._uploads.manifest((keeping.host, step.repository), digest, body,
                                         media_type, authorization, step.tag)  # fmt: skip


def _uuid(location: str) -> str:
    """The upload's name in upstream's Location (`…/blobs/uploads/<uuid>?_state=…`)."""
    path = URL(location).path if location else ""
    found = _UPLOAD.fullmatch(path)
    return found.group("uuid") if found is not None else ""
