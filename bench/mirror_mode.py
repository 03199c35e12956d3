"""Mirror mode's cost on the hit path: the same warm blob asked for by its registry's
name (DNS interception) and through the mirror name (`?ns=`), in alternating rounds.

    sudo .venv/bin/python bench/mirror_mode.py [--requests 1000] [--rounds 3]

Builds the e2e lab (tests/e2e/lab.py: a namespace, distribution 2.8 upstreams, regcache
with mirror mode on 127.0.0.2:5443), then runs `bench/mirror_mode.py --client` inside the
namespace: one keep-alive connection per path, sequential GETs. Prints requests/s per
round and the ratio mirror/intercepted of the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MIRROR = "regcache.build.internal:5443"


async def _rate(url: str, cafile: str, requests: int) -> float:
    context = ssl.create_default_context(cafile=cafile)
    connector = aiohttp.TCPConnector(ssl=context, limit=1)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.get(url) as response:  # the connection, warm
            assert response.status == 200, (url, response.status)
            await response.read()
        started = time.perf_counter()
        for _ in range(requests):
            async with session.get(url) as response:
                await response.read()
        return requests / (time.perf_counter() - started)


def _client(args: argparse.Namespace) -> None:
    rates: dict[str, list[float]] = {"intercepted": [], "mirror": []}
    paths = [("intercepted", args.intercepted), ("mirror", args.mirror)]
    for n in range(args.rounds):  # alternating which goes first
        for name, url in paths if n % 2 == 0 else paths[::-1]:
            rates[name].append(asyncio.run(_rate(url, args.ca, args.requests)))
    print(json.dumps(rates))


def _lab(args: argparse.Namespace) -> None:
    images = importlib.import_module("tests.e2e.images")  # the e2e lab, as the tests use it
    e2e = importlib.import_module("tests.e2e.lab")

    def mirror_mode(config: dict[str, Any]) -> None:
        config["mirror_mode"] = {"names": [MIRROR.split(":")[0]],
                                 "listen": [f"{e2e.REGCACHE_IP}:5443"]}  # fmt: skip
        config["tls"]["permitted_domains"] = [*config["tls"]["permitted_domains"],
                                              "build.internal"]  # fmt: skip

    with (
        tempfile.TemporaryDirectory(prefix="rcbench-mm-") as tmp,
        e2e.lab(Path(tmp), mirror_mode) as running,
    ):
        img = images.image([images.layer(4096, "bench-mm")])
        running.push_upstream("ghcr.io", "bench/mm", "v1", img)
        digest = img.layers[0].digest
        path = f"/v2/bench/mm/blobs/{digest}"
        argv = running.ns.argv(
            sys.executable, __file__, "--client", "--ca", str(running.ca_dir / "ca.crt"),
            "--intercepted", f"https://ghcr.io{path}", "--mirror", f"https://{MIRROR}{path}?ns=ghcr.io",
            "--requests", str(args.requests), "--rounds", str(args.rounds),
        )  # fmt: skip
        out = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=REPO)
        rates = json.loads(out.stdout)
    for name, values in rates.items():
        print(f"{name:12s} req/s: " + ", ".join(f"{v:.0f}" for v in values))
    ratio = statistics.median(rates["mirror"]) / statistics.median(rates["intercepted"])
    print(f"mirror / intercepted (medians): {ratio:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ca", help=argparse.SUPPRESS)
    parser.add_argument("--intercepted", help=argparse.SUPPRESS)
    parser.add_argument("--mirror", help=argparse.SUPPRESS)
    args = parser.parse_args()
    (_client if args.client else _lab)(args)


if __name__ == "__main__":
    main()
