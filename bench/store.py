"""Store lifecycle figures: reconciliation, eviction and verify, on a generated store.

    .venv/bin/python bench/store.py                    # 10,000 blobs, about 1 GB, ~1 minute
    .venv/bin/python bench/store.py --blobs 2000 --kib 64   # a smaller run

Builds a store of `--blobs` blobs (random bytes, `--kib` KiB on average) referenced by
images of 9 layers and a config each, under a temporary directory, with the same code
regcache runs. Prints a Markdown table. No network, no root.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from appliance.config.model import Size, StoreConfig
from appliance.oci.digest import Digest
from appliance.oci.manifest import references
from appliance.oci.mediatypes import OCI_MANIFEST
from appliance.store import maintenance
from appliance.store.eviction import Evictor
from appliance.store.files import FileBlobStore
from appliance.store.reconcile import INDEX_NAME, open_index, reconcile

LAYERS_PER_IMAGE = 10  # a config and 9 layers


async def _build(root: Path, blobs: int, kib: int) -> int:
    files = FileBlobStore(root)
    files.prepare()
    index, _ = await open_index(root)
    total = 0
    rng = random.Random(1)
    pending: list[str] = []
    for i in range(blobs):
        data = os.urandom(max(1, int(rng.expovariate(1 / (kib * 1024)))))
        temp = files.create_temp()
        temp.write(data)
        digest = Digest.of(data)
        await files.commit(temp, digest)
        await index.add_blob(digest, len(data), None)
        total += len(data)
        pending.append(str(digest))
        if len(pending) == LAYERS_PER_IMAGE or i == blobs - 1:
            body = json.dumps({
                "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"digest": pending[0]},
                "layers": [{"digest": d} for d in pending[1:]],
            }).encode()  # fmt: skip
            temp = files.create_temp()
            temp.write(body)
            manifest = Digest.of(body)
            await files.commit(temp, manifest)
            await index.add_manifest(
                manifest, len(body), OCI_MANIFEST, references(body), ("ghcr.io", f"r/{i}")
            )
            pending = []
    await index.close()
    return total


async def _measure(root: Path, total: int) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    files = FileBlobStore(root)
    index, _ = await open_index(root)
    report = await reconcile(index, files, at_start=True)
    rows.append((f"reconcile, index intact ({report.files} files)", f"{report.seconds:.2f} s"))
    await index.close()
    (root / INDEX_NAME).write_bytes(os.urandom(4096))
    for suffix in ("-wal", "-shm"):
        (root / (INDEX_NAME + suffix)).unlink(missing_ok=True)
    started = time.monotonic()
    index, rebuilt = await open_index(root)
    assert rebuilt
    report = await reconcile(index, files, at_start=True)
    rows.append(
        (
            f"rebuild a lost index ({report.reindexed} files re-hashed)",
            f"{time.monotonic() - started:.2f} s",
        )
    )
    blob_paths = [str(p) for p, _ in files.walk()]
    started = time.monotonic()
    await asyncio.to_thread(
        subprocess.run, ["sha256sum", *blob_paths], stdout=subprocess.DEVNULL, check=True
    )
    sha = time.monotonic() - started
    verified = await maintenance.verify(index, files, None)
    rows.append(
        (
            "verify (page cache warm)",
            f"{verified.bytes / verified.seconds / 1e6:.0f} MB/s; sha256sum on the same "
            f"files: {verified.bytes / sha / 1e6:.0f} MB/s",
        )
    )
    limits = StoreConfig(max_size=Size(1), high_watermark_pct=2, low_watermark_pct=1)
    before = await index.total_size()
    result = await Evictor(index, files, limits).evict(before, reason="bench")
    rows.append(
        (
            f"evict everything ({result.rows} rows, {result.bytes / 1e9:.2f} GB)",
            f"{result.seconds:.2f} s: {result.rows / result.seconds:.0f} rows/s, "
            f"{result.bytes / result.seconds / 1e9:.2f} GB/s",
        )
    )
    await index.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--blobs", type=int, default=10_000)
    parser.add_argument("--kib", type=int, default=100, help="mean blob size")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="regcache-store-bench-"))
    try:
        started = time.monotonic()
        total = asyncio.run(_build(root, args.blobs, args.kib))
        took = time.monotonic() - started
        print(f"built {args.blobs} blobs, {total / 1e9:.2f} GB in {took:.1f} s")
        print("\n| operation | result |\n|---|---|")
        for what, figure in asyncio.run(_measure(root, total)):
            print(f"| {what} | {figure} |")
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
