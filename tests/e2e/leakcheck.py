"""Randomised interleaving of clients with and without access, run inside the lab's
namespace: `python -m tests.e2e.leakcheck SPEC.json`. Prints a JSON summary.

SPEC: {"ca": path, "host": ..., "repositories": {repo: [[digest, hex, kind]]},
       "elsewhere": [[host, repository]], "alice": "user:password", "dave": "user:password",
       "requests": N, "seed": S, "mirror": "name:port" (optional)}

With "mirror", every request goes to regcache's mirror endpoint instead, naming the
registry with `?ns=` as containerd does, and tokens come through its realm relay.

alice asks for her digests under her repository (fills start cold, strangers join them);
strangers ask for them there and under every name in "elsewhere" (a public repository,
dave's own, other registries, a redirecting one), dave with his own token.
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


async def token(
    session: aiohttp.ClientSession, host: str, repo: str, basic: str | None, mirror: str | None
) -> str:
    headers = (
        {"Authorization": "Basic " + base64.b64encode(basic.encode()).decode()} if basic else {}
    )
    url = (
        f"https://{mirror}/_realm/auth.docker.io/token"
        if mirror
        else "https://auth.docker.io/token"
    )
    params = {"service": "registry.docker.io", "scope": f"repository:{repo}:pull"}
    async with session.get(url, params=params, headers=headers) as response:
        return str((await response.json())["token"])


async def main(spec: dict[str, Any]) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=spec["ca"])
    rng = random.Random(spec["seed"])
    host, mirror = spec["host"], spec.get("mirror")
    summary = {"ok": 0, "refused": 0, "leaks": [], "errors": [], "wrong_bytes": []}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context, limit=64)) as s:
        creds: dict[tuple[str, str, str], str | None] = {}
        names = [(host, repo) for repo in spec["repositories"]]
        names += [(h, r) for h, r in spec["elsewhere"]]
        for where, repo in names:
            hub = where == host
            creds[("alice", where, repo)] = "Bearer " + await token(
                s, host, repo, spec["alice"], mirror
            )
            creds[("anonymous", where, repo)] = (
                "Bearer " + await token(s, host, repo, None, mirror) if hub else None
            )
            creds[("dave", where, repo)] = (
                "Bearer " + await token(s, host, repo, spec["dave"], mirror) if hub else None
            )
            creds[("nobody", where, repo)] = None
            creds[("forger", where, repo)] = (
                "Bearer forged." + base64.b64encode(rng.randbytes(12)).decode()
            )

        async def one(who: str, where: str, repo: str, digest: str, want: str, kind: str) -> None:
            headers = {"Accept": "application/vnd.oci.image.manifest.v1+json"}
            auth = creds[(who, where, repo)]
            if auth:
                headers["Authorization"] = auth
            url = f"https://{where}/v2/{repo}/{kind}/{digest}"
            if mirror:
                url = f"https://{mirror}/v2/{repo}/{kind}/{digest}?ns={where}"
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
            who = rng.choice(["alice", "anonymous", "nobody", "forger", "dave"])
            where, name = (host, repo) if who == "alice" else rng.choice(
                [(host, repo), *map(tuple, spec["elsewhere"])]
            )  # fmt: skip
            jobs.append(one(who, where, name, digest, want, kind))
        await asyncio.gather(*jobs)
    return summary


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(json.dumps(asyncio.run(main(json.load(f)))))
