"""Push blobs and manifests as they are, byte for byte (what an OCI artifact client such as
oras or cosign sends): `python -m tests.e2e.ocipush BASE CAFILE REPOSITORY ITEMS.json`.

ITEMS: [{"blob": path} | {"manifest": path, "media_type": type, "reference": tag}]. Blobs
go up whole (POST, then PUT with the digest); manifests by PUT to their reference. Run it
where BASE's name reaches the registry meant (the lab's namespace: regcache; with the
upstream named in /etc/hosts: the registry itself)."""

from __future__ import annotations

import hashlib
import json
import ssl
import sys
import urllib.request
from pathlib import Path
from urllib.parse import urljoin


def _send(context: ssl.SSLContext, method: str, url: str, body: bytes = b"",
          headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:  # fmt: skip
    request = urllib.request.Request(  # noqa: S310 - https:// URLs the test builds
        url, data=body or None, method=method, headers=headers or {}
    )
    with urllib.request.urlopen(request, context=context, timeout=60) as response:  # noqa: S310
        return response.status, dict(response.headers)


def main(base: str, cafile: str, repository: str, items: list[dict[str, str]]) -> None:
    context = ssl.create_default_context(cafile=cafile)
    for item in items:
        if "blob" in item:
            data = Path(item["blob"]).read_bytes()
            digest = "sha256:" + hashlib.sha256(data).hexdigest()
            _, headers = _send(context, "POST", f"{base}/v2/{repository}/blobs/uploads/")
            location = urljoin(base, headers["Location"])
            joiner = "&" if "?" in location else "?"
            _send(context, "PUT", f"{location}{joiner}digest={digest}", data,
                  {"Content-Type": "application/octet-stream"})  # fmt: skip
        else:
            data = Path(item["manifest"]).read_bytes()
            url = f"{base}/v2/{repository}/manifests/{item['reference']}"
            _send(context, "PUT", url, data, {"Content-Type": item["media_type"]})


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], json.loads(Path(sys.argv[4]).read_text()))
