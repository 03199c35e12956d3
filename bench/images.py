"""Generated test images: OCI layouts of random (incompressible) layers, streamed to disk."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path


class RandomReader:
    """`size` random bytes for tarfile to copy: incompressible, never all in memory."""

    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return os.urandom(n)


class HashingWriter:
    def __init__(self, f: io.BufferedWriter) -> None:
        self.f = f
        self.hash = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        return self.f.write(data)


def write_layer(blobs: Path, size: int) -> dict[str, str | int]:
    """A tar of `size` random bytes, streamed to disk while it is hashed."""
    tmp = blobs / "layer.tmp"
    with tmp.open("wb") as f:
        out = HashingWriter(f)
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            info = tarfile.TarInfo("payload")
            info.size = size
            tar.addfile(info, RandomReader(size))
    hex_ = out.hash.hexdigest()
    tmp.rename(blobs / hex_)
    return {
        "mediaType": "application/vnd.oci.image.layer.v1.tar",
        "digest": f"sha256:{hex_}",
        "size": (blobs / hex_).stat().st_size,
    }


@dataclass(frozen=True)
class Image:
    size: int
    """Layers and config, in bytes (the manifest is not counted)."""
    manifest: str
    layers: list[str]
    layer_sizes: list[int]


def write_image(folder: Path, layer_sizes: list[int]) -> Image:
    """An OCI layout (tag `v1`) with random layers."""
    blobs = folder / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    layers = [write_layer(blobs, size) for size in layer_sizes]

    def put(data: bytes, media_type: str) -> dict[str, str | int]:
        hex_ = hashlib.sha256(data).hexdigest()
        (blobs / hex_).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{hex_}", "size": len(data)}

    config = put(json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {
        "type": "layers", "diff_ids": [d["digest"] for d in layers]}}).encode(),
        "application/vnd.oci.image.config.v1+json")  # fmt: skip
    manifest_type = "application/vnd.oci.image.manifest.v1+json"
    manifest = put(
        json.dumps({"schemaVersion": 2, "mediaType": manifest_type, "config": config,
                    "layers": layers}).encode(),
        manifest_type,
    )  # fmt: skip
    tagged = {**manifest, "annotations": {"org.opencontainers.image.ref.name": "v1"}}
    (folder / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (folder / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [tagged]}))
    size = sum(int(d["size"]) for d in layers) + int(config["size"])
    digests = [str(d["digest"]) for d in layers]
    return Image(size, str(manifest["digest"]), digests, [int(d["size"]) for d in layers])
