"""Test images written as OCI layouts: random incompressible tar layers, single- and
multi-platform, so skopeo can push them and pulls can be compared byte for byte."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


@dataclass(frozen=True)
class Blob:
    data: bytes
    media_type: str

    @property
    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.data).hexdigest()

    def descriptor(self, **extra: object) -> dict[str, object]:
        return {
            "mediaType": self.media_type,
            "digest": self.digest,
            "size": len(self.data),
            **extra,
        }


def layer(size: int, name: str = "payload") -> Blob:
    """A tar holding one file of `size` random bytes (incompressible)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(name)
        info.size = size
        tar.addfile(info, io.BytesIO(os.urandom(size)))
    return Blob(buf.getvalue(), OCI_LAYER)


@dataclass(frozen=True)
class Image:
    top: Blob
    """The manifest or index a tag points at."""
    blobs: tuple[Blob, ...]
    """Everything below it: configs, layers, child manifests."""

    @property
    def layers(self) -> list[Blob]:
        return [b for b in self.blobs if b.media_type == OCI_LAYER]


def image(layers: list[Blob], arch: str = "amd64") -> Image:
    config = Blob(
        json.dumps(
            {"architecture": arch, "os": "linux",
             "rootfs": {"type": "layers", "diff_ids": [b.digest for b in layers]}},
            sort_keys=True,
        ).encode(),
        OCI_CONFIG,
    )  # fmt: skip
    manifest = Blob(
        json.dumps(
            {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config.descriptor(),
             "layers": [b.descriptor() for b in layers]},
            sort_keys=True,
        ).encode(),
        OCI_MANIFEST,
    )  # fmt: skip
    return Image(manifest, (config, *layers))


def index(platforms: dict[str, Image]) -> Image:
    top = Blob(
        json.dumps(
            {"schemaVersion": 2, "mediaType": OCI_INDEX,
             "manifests": [img.top.descriptor(platform={"architecture": arch, "os": "linux"})
                           for arch, img in platforms.items()]},
            sort_keys=True,
        ).encode(),
        OCI_INDEX,
    )  # fmt: skip
    blobs = tuple(b for img in platforms.values() for b in (img.top, *img.blobs))
    return Image(top, blobs)


def write_layout(folder: Path, tag: str, img: Image) -> Path:
    """An OCI image layout with `img` under `tag` (for `skopeo copy oci:<folder>:<tag>`)."""
    blobs = folder / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    for blob in (img.top, *img.blobs):
        (blobs / blob.digest.split(":")[1]).write_bytes(blob.data)
    (folder / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    ref = {"org.opencontainers.image.ref.name": tag}
    top = img.top.descriptor(annotations=ref)
    (folder / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))
    return folder
