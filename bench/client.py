"""The benchmark's HTTP client, run inside the bench's network namespace by bench/run.py.

    client.py latency URL --method GET|HEAD --n 2000 --accept TYPE --ca FILE...
        one keep-alive connection (blocking http.client), N requests one after another:
        each request's time until its body is read, in ms (p50, p99, mean).
    client.py crowd URL --n 16 --ca FILE...
        N GETs at once, each on its own connection: time to first byte and to the last
        byte, and bytes read (the body is counted and dropped, never kept).

Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import ssl
import statistics
import time
from urllib.parse import urlsplit

import aiohttp

READ_BYTES = 1 << 20


def _context(cas: list[str]) -> ssl.SSLContext:
    context = ssl.create_default_context()
    for ca in cas:
        context.load_verify_locations(ca)
    return context


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def latency(
    url: str, method: str, n: int, accept: str, context: ssl.SSLContext
) -> dict[str, float]:
    """Blocking http.client on one connection: little client time in what is measured."""
    parts = urlsplit(url)
    connection = http.client.HTTPSConnection(parts.netloc, context=context)
    times: list[float] = []
    for i in range(n + 20):  # the first 20 warm the connection and are not counted
        started = time.perf_counter()
        connection.request(method, parts.path, headers={"Accept": accept})
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"{method} {url}: {response.status}")
        if i >= 20:
            times.append((time.perf_counter() - started) * 1000)
    connection.close()
    return {
        "p50_ms": _percentile(times, 50),
        "p99_ms": _percentile(times, 99),
        "mean_ms": statistics.fmean(times),
    }


async def _one(url: str, context: ssl.SSLContext, start: asyncio.Event) -> dict[str, float]:
    connector = aiohttp.TCPConnector(limit=1, ssl=context)
    async with aiohttp.ClientSession(connector=connector) as session:
        await start.wait()
        started = time.perf_counter()
        async with session.get(url) as response:
            if response.status != 200:
                raise SystemExit(f"GET {url}: {response.status}")
            first, size = None, 0
            async for chunk in response.content.iter_chunked(READ_BYTES):
                if first is None:
                    first = time.perf_counter() - started
                size += len(chunk)
        return {"ttfb_s": first or 0.0, "total_s": time.perf_counter() - started, "bytes": size}


async def crowd(url: str, n: int, context: ssl.SSLContext) -> dict[str, object]:
    start = asyncio.Event()
    tasks = [asyncio.create_task(_one(url, context, start)) for _ in range(n)]
    await asyncio.sleep(0.2)  # every session made: they send at once
    start.set()
    return {"clients": await asyncio.gather(*tasks)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["latency", "crowd"])
    parser.add_argument("url")
    parser.add_argument("--method", default="GET")
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--accept", default="application/vnd.oci.image.manifest.v1+json")
    parser.add_argument("--ca", action="append", default=[])
    args = parser.parse_args()
    context = _context(args.ca)
    if args.mode == "latency":
        result: object = latency(args.url, args.method, args.n, args.accept, context)
    else:
        result = asyncio.run(crowd(args.url, args.n, context))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
