"""Randomised interleaving of clients with and without access, run inside the lab's
namespace: `python -m tests.e2e.leakcheck SPEC.json`. Prints a JSON summary.

SPEC: {"ca": path, "host": ..., "repositories": {repo: {digest: sha256-of-bytes}},
       "alice": "user:password", "requests": N, "seed": S}
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import random
import ssl
import sys
from typing import Any

import aiohttp


async def token(session: aiohttp.ClientSession, host: str, repo: str, basic: str | None) -> str:
    headers = (
        {"Authorization": "Basic " + base64.b64encode(basic.encode()).decode()} if basic else {}
    )
    url = "https://auth.docker.io/token"
    params = {"service": "registry.docker.io", "scope": f"repository:{repo}:pull"}
    async with session.get(url, params=params, headers=headers) as response:
        return str((await response.json())["token"])


async def main(spec: dict[str, Any]) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=spec["ca"])
    rng = random.Random(spec["seed"])
    host = spec["host"]
    summary = {"ok": 0, "refused": 0, "leaks": [], "errors": [], "wrong_bytes": []}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context, limit=64)) as s:
        creds: dict[tuple[str, str], str | None] = {}
        for repo in spec["repositories"]:
            creds[("alice", repo)] = "Bearer " + await token(s, host, repo, spec["alice"])
            creds[("anonymous", repo)] = "Bearer " + await token(s, host, repo, None)
            creds[("nobody", repo)] = None
            creds[("forger", repo)] = (
                "Bearer forged." + base64.b64encode(rng.randbytes(12)).decode()
            )

        async def one(who: str, repo: str, digest: str, want: str, kind: str) -> None:
            headers = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
            auth = creds[(who, repo)]
            if auth:
                headers["Authorization"] = auth
            url = f"https://{host}/v2/{repo}/{kind}/{digest}"
            try:
                async with s.get(url, headers=headers) as response:
                    body = await response.read()
                    status = response.status
            except aiohttp.ClientError as e:
                summary["errors"].append(f"{who} {url}: {e!r}")
                return
            if who == "alice":
                if status == 200 and hashlib.sha256(body).hexdigest() == want:
                    summary["ok"] += 1
                else:
                    summary["wrong_bytes"].append(f"{url} {status}")
            elif status in (401, 403, 404) and hashlib.sha256(body).hexdigest() != want:
                summary["refused"] += 1
            else:
                summary["leaks"].append(f"{who} {url} {status}")

        jobs = []
        for _ in range(spec["requests"]):
            repo = rng.choice(list(spec["repositories"]))
            digest, want, kind = rng.choice(spec["repositories"][repo])
            jobs.append(
                one(
                    rng.choice(["alice", "anonymous", "nobody", "forger"]), repo, digest, want, kind
                )
            )
        await asyncio.gather(*jobs)
    return summary


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(json.dumps(asyncio.run(main(json.load(f)))))
