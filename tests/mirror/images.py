"""Images for the mirror tests: an image manifest with its config and layers, a
multi-platform index of such images, and the routes a scripted upstream
(`tests.cache.fakes.FakeUpstream`) serves them by."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from appliance.oci.digest import Digest
from appliance.oci.mediatypes import OCI_INDEX, OCI_MANIFEST
from tests.cache.fakes import FakeUpstream

LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"


@dataclass
class Image:
    """A manifest (an image's, or an index of images) and every blob it needs."""

    body: bytes
    media_type: str
    blobs: dict[Digest, bytes] = field(default_factory=dict)
    children: list[Image] = field(default_factory=list)
    """An index's images, in its order."""

    @property
    def digest(self) -> Digest:
        return Digest.of(self.body)

    def manifests(self) -> list[Image]:
        """Itself and every manifest under it."""
        return [self, *(m for c in self.children for m in c.manifests())]

    def all_blobs(self) -> dict[Digest, bytes]:
        found = dict(self.blobs)
        for child in self.children:
            found.update(child.all_blobs())
        return found


def image(name: str, layers: int = 2, *, foreign: bytes | None = None) -> Image:
    """An OCI image whose config and layers are distinct per `name`; `foreign`: a layer
    with `urls` (fetched from elsewhere, never from the registry)."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "name": name}).encode()
    parts = [f"{name} layer {i} ".encode() * 300 for i in range(layers)]
    descriptors = [{"mediaType": LAYER_TYPE, "digest": str(Digest.of(p)), "size": len(p)}
                   for p in parts]  # fmt: skip
    if foreign is not None:
        descriptors.append({"mediaType": LAYER_TYPE, "digest": str(Digest.of(foreign)),
                            "size": len(foreign), "urls": ["https://example.com/l"]})  # fmt: skip
    body = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": str(Digest.of(config)), "size": len(config)},
        "layers": descriptors,
    }).encode()  # fmt: skip
    blobs = {Digest.of(config): config, **{Digest.of(p): p for p in parts}}
    return Image(body, OCI_MANIFEST, blobs)


def index(platforms: dict[str, Image], *, attestation: Image | None = None) -> Image:
    """A multi-platform index (`linux/arm64/v8` → its image); `attestation`: a child
    with no platform (as buildkit's are listed)."""
    descriptors = []
    for name, child in platforms.items():
        os_, arch, *variant = name.split("/")
        platform = {"os": os_, "architecture": arch, **({"variant": variant[0]} if variant else {})}
        descriptors.append({"mediaType": child.media_type, "digest": str(child.digest),
                            "size": len(child.body), "platform": platform})  # fmt: skip
    children = list(platforms.values())
    if attestation is not None:
        descriptors.append({"mediaType": attestation.media_type,
                            "digest": str(attestation.digest),
                            "size": len(attestation.body)})  # fmt: skip
        children.append(attestation)
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                       "manifests": descriptors}).encode()  # fmt: skip
    return Image(body, OCI_INDEX, {}, children)


def serve(upstream: FakeUpstream, base: str, served: Image, tag: str | None = None,
          **headers: str) -> None:  # fmt: skip
    """Every manifest and blob of `served` under `base` (`https://host/v2/repo`), and
    `tag` naming it (HEAD and GET), with extra `headers` on the manifests' answers."""
    for manifest in served.manifests():
        _manifest(upstream, f"{base}/manifests/{manifest.digest}", manifest, **headers)
    if tag is not None:
        _manifest(upstream, f"{base}/manifests/{tag}", served, **headers)
    for digest, body in served.all_blobs().items():
        for method in ("HEAD", "GET"):
            upstream.add(method, f"{base}/blobs/{digest}", 200,
                         body if method == "GET" else b"", Content_Length=str(len(body)),
                         Docker_Content_Digest=str(digest))  # fmt: skip


def _manifest(upstream: FakeUpstream, url: str, manifest: Image, **headers: str) -> None:
    for method in ("HEAD", "GET"):
        upstream.add(method, url, 200, manifest.body if method == "GET" else b"",
                     Content_Type=manifest.media_type, Content_Length=str(len(manifest.body)),
                     Docker_Content_Digest=str(manifest.digest), **headers)  # fmt: skip
