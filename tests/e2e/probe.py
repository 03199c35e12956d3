"""The access probe matrix, run inside the lab's namespace: `python -m tests.e2e.probe
SPEC.json` prints one JSON result per probe.

Every probe asks regcache (through the namespace's DNS, as a build host would) for one
digest under one (host, repository), as one kind of client, by GET, HEAD or a ranged GET,
and asks the same for a digest nobody has (the control: a refusal must look the same
whether or not regcache holds the content). With "oracle", it also asks the real
upstream directly — around regcache, redirects followed and the anonymous token step
done — whether that client, or anyone at all, may read it: the truth a leak is judged by.

SPEC: {"ca", "upstream_ca", "addresses": {host: ip}, "creds": {who: "user:password"},
       "probes": [{"who", "host", "repository", "kind", "digest", "method"}],
       "control": "sha256:...", "oracle": bool}
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import socket
import ssl
import sys
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.index.v1+json", "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])  # fmt: skip
HUB, TOKEN_REALM = "registry-1.docker.io", "https://auth.docker.io/token"


class Direct(AbstractResolver):
    """Names to the upstreams' own addresses: around regcache's DNS."""

    def __init__(self, addresses: dict[str, str]) -> None:
        self._addresses = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [{"hostname": host, "host": self._addresses[host], "port": port,
                 "family": socket.AF_INET, "proto": 0, "flags": socket.AI_NUMERICHOST}]  # fmt: skip

    async def close(self) -> None:
        return None


def basic(pair: str) -> str:
    return "Basic " + base64.b64encode(pair.encode()).decode()


async def token(session: aiohttp.ClientSession, repository: str, pair: str | None) -> str | None:
    params = {"service": "registry.docker.io", "scope": f"repository:{repository}:pull"}
    headers = {"Authorization": basic(pair)} if pair else {}
    async with session.get(TOKEN_REALM, params=params, headers=headers) as response:
        if response.status != 200:
            return None
        return str((await response.json())["token"])


async def authorization(
    session: aiohttp.ClientSession, who: str, host: str, repository: str, creds: dict[str, str]
) -> str | None:
    """What this kind of client sends: a token for the repository from the realm on
    Docker Hub (anonymous or with its password), its Basic credentials elsewhere; `none`
    nothing; `wrong` a password nobody accepts."""
    if who == "none":
        return None
    if who == "wrong":
        return basic(creds["wrong"])
    if host == HUB:
        got = await token(session, repository, creds.get(who))
        return f"Bearer {got}" if got else None
    return basic(creds[who]) if who in creds else None


async def ask(
    session: aiohttp.ClientSession, url: str, method: str, auth: str | None, manifest: bool
) -> tuple[int, bytes]:
    headers = {"Accept": MANIFEST_TYPES} if manifest else {}
    if auth:
        headers["Authorization"] = auth
    if method == "RANGE":
        headers["Range"] = "bytes=0-9"
    async with session.request(
        "HEAD" if method == "HEAD" else "GET", url, headers=headers, allow_redirects=False
    ) as response:
        return response.status, await response.read()


async def upstream_says(
    session: aiohttp.ClientSession, url: str, auth: str | None, manifest: bool
) -> int:
    """The final status upstream gives a HEAD of `url`: redirects followed, credentials
    dropped on leaving the host, a redirect target's anonymous token step done."""
    headers = {"Accept": MANIFEST_TYPES} if manifest else {}
    if auth:
        headers["Authorization"] = auth
    origin = URL(url).origin()
    for _ in range(5):
        async with session.head(url, headers=headers, allow_redirects=False) as response:
            status, location = response.status, response.headers.get("Location")
            challenge = response.headers.get("WWW-Authenticate", "")
        if status in (301, 302, 303, 307, 308) and location:
            url = str(URL(url).join(URL(location)))
            if URL(url).origin() != origin:
                headers.pop("Authorization", None)
            continue
        if status == 401 and URL(url).origin() != origin and 'realm="' in challenge:
            params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
            query = {k: params[k] for k in ("service", "scope") if k in params}
            async with session.get(params["realm"], params=query) as got:
                headers["Authorization"] = "Bearer " + (await got.json())["token"]
            origin = URL(url).origin()  # asked once, with that token
            continue
        return status
    return 0


async def main(spec: dict[str, Any]) -> list[dict[str, Any]]:
    via = ssl.create_default_context(cafile=spec["ca"])
    direct_tls = ssl.create_default_context(cafile=spec["upstream_ca"])
    creds: dict[str, str] = spec["creds"]
    results: list[dict[str, Any]] = []
    limit = asyncio.Semaphore(16)
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=via, limit=32)) as regcache,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            ssl=direct_tls, resolver=Direct(spec["addresses"]), limit=32)) as upstream,
    ):  # fmt: skip
        auths: dict[tuple[str, str, str], str | None] = {}
        for p in spec["probes"]:
            key = (p["who"], p["host"], p["repository"])
            if key not in auths:
                auths[key] = await authorization(regcache, *key, creds)

        async def one(p: dict[str, Any]) -> None:
            async with limit:
                auth = auths[(p["who"], p["host"], p["repository"])]
                manifest = p["kind"] == "manifests"
                base = f"https://{p['host']}/v2/{p['repository']}/{p['kind']}/"
                try:
                    status, body = await ask(regcache, base + p["digest"], p["method"], auth,
                                             manifest)  # fmt: skip
                    control, _ = await ask(regcache, base + spec["control"], p["method"], auth,
                                           manifest)  # fmt: skip
                except aiohttp.ClientError as e:
                    results.append({**p, "error": repr(e)})
                    return
                result = {**p, "status": status, "control": control, "bytes": len(body)}
                if spec.get("oracle"):
                    result["own"] = await upstream_says(upstream, base + p["digest"], auth,
                                                        manifest)  # fmt: skip
                    result["anyone"] = await upstream_says(
                        upstream, base + p["digest"],
                        await authorization(upstream, "anonymous", p["host"], p["repository"],
                                            creds), manifest,
                    )  # fmt: skip
                results.append(result)

        await asyncio.gather(*(one(p) for p in spec["probes"]))
    return results


if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        print(json.dumps(asyncio.run(main(json.load(f)))))
