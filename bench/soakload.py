"""The soak's HTTP load, run inside the bench's network namespace by bench/soak.py.

    soakload.py prepare --plan FILE --images 16 --ca FILE...
        pushes the warm images to the upstream (once: skipped when FILE exists) and pulls
        each through regcache under both registry names, so they are in its store.
    soakload.py http --plan FILE --clients 150 --rate 150 --start-at T --seconds 600 ...
        that many keep-alive clients (one aiohttp session and connection each, from
        --sources source addresses) until T + seconds, each request one JSON line in --out.

Every answer is checked: status, and the bytes' digest or length for each valid request;
invalid requests (bad digests, unknown repositories, malformed paths) must get a 4xx. A
line is {"t": seconds since T, "k": kind, "ms", "s": status, "b": body bytes, "ok"}, and
for a failure what was asked and what came back.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import resource
import socket
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

HUB, QUAY, UPSTREAM = "registry-1.docker.io", "quay.io", "upstream.bench"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
ACCEPT = {"Accept": f"{OCI_MANIFEST}, application/vnd.oci.image.index.v1+json"}
KiB, MiB = 1 << 10, 1 << 20
WARM_SIZES = (4 * KiB, 32 * KiB, 256 * KiB, 1 * MiB, 4 * MiB)
COLD_SIZES = (16 * KiB, 128 * KiB, 512 * KiB)
SLOW_BLOB = 1 * MiB
# What one step of a client is, by weight; "cold" pulls a freshly pushed image (one
# manifest and three blobs), the others are one request each.
MIX = {"blob": 40, "head": 15, "head ttl": 10, "manifest": 12, "invalid": 10, "cold": 3}
RAMP_S = 5.0
"""The clients' first steps are spread over this long."""
TIMEOUT = aiohttp.ClientTimeout(total=120, sock_connect=15)


@dataclass
class Blob:
    digest: str
    size: int


@dataclass
class Image:
    repo: str
    tag: str
    manifest: str
    blobs: list[Blob] = field(default_factory=list)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def cpu_s() -> float:
    """This load process's own CPU seconds: on 2 cores the load competes with regcache."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def context(cas: list[str]) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    for ca in cas:
        ctx.load_verify_locations(ca)
    return ctx


class Recorder:
    """One JSON line per answer, timed from the common start `start_at` (wall clock, so
    the lines of every load process fall in the same minutes)."""

    def __init__(self, path: Path, start_at: float) -> None:
        self._out = path.open("w")
        self.start_at = start_at

    def add(self, kind: str, started: float, status: int, size: int, ok: bool, **why: Any) -> None:
        line = {"t": round(time.time() - self.start_at, 3), "k": kind,
                "ms": round((time.perf_counter() - started) * 1000, 3), "s": status, "b": size,
                "ok": ok, **why}  # fmt: skip
        self._out.write(json.dumps(line) + "\n")

    def close(self) -> None:
        self._out.close()


# The upstream, as a CI job pushing images would


async def push_blob(session: aiohttp.ClientSession, repo: str, data: bytes) -> Blob:
    digest = sha256(data)
    async with session.post(f"https://{UPSTREAM}/v2/{repo}/blobs/uploads/") as r:
        if r.status != 202:
            raise RuntimeError(f"push {repo}: upload start {r.status} {await r.text()}")
        location = URL(f"https://{UPSTREAM}").join(URL(r.headers["Location"], encoded=True))
    url = URL(f"{location}&digest={digest}", encoded=True)
    async with session.put(
        url, data=data, headers={"Content-Type": "application/octet-stream"}
    ) as r:
        if r.status != 201:
            raise RuntimeError(f"push {repo}: upload {r.status} {await r.text()}")
    return Blob(digest, len(data))


async def push_image(
    session: aiohttp.ClientSession, repo: str, tag: str, sizes: list[int]
) -> Image:
    """An image of random layers of `sizes` bytes (not tars: nothing here unpacks them)."""
    layers = [await push_blob(session, repo, os.urandom(n)) for n in sizes]
    config_body = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {
        "type": "layers", "diff_ids": [b.digest for b in layers]}}).encode()  # fmt: skip
    config = await push_blob(session, repo, config_body)

    def descriptor(blob: Blob, media_type: str) -> dict[str, object]:
        return {"mediaType": media_type, "digest": blob.digest, "size": blob.size}

    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": descriptor(config, OCI_CONFIG),
                       "layers": [descriptor(b, OCI_LAYER) for b in layers]}).encode()  # fmt: skip
    url = f"https://{UPSTREAM}/v2/{repo}/manifests/{tag}"
    async with session.put(url, data=body, headers={"Content-Type": OCI_MANIFEST}) as r:
        if r.status != 201:
            raise RuntimeError(f"push {repo}:{tag}: manifest {r.status} {await r.text()}")
    return Image(repo, tag, sha256(body), [config, *layers])


# Checks of one answer: None when it is what a registry must answer, else what is wrong

Check = Callable[[int, bytes, Any], str | None]


def body_is(digest: str, size: int | None = None) -> Check:
    def check(status: int, body: bytes, _headers: object) -> str | None:
        if status != 200:
            return f"status {status}"
        if size is not None and len(body) != size:
            return f"{len(body)} bytes, not {size}"
        return None if sha256(body) == digest else "wrong bytes"

    return check


def head_names(digest: str) -> Check:
    def check(status: int, _body: bytes, headers: Any) -> str | None:
        if status != 200:
            return f"status {status}"
        got = headers.get("Docker-Content-Digest")
        return None if got == digest else f"Docker-Content-Digest {got}"

    return check


def refused(status: int, _body: bytes, _headers: object) -> str | None:
    return None if 400 <= status < 500 else f"status {status}, not a 4xx"


async def ask(
    session: aiohttp.ClientSession, rec: Recorder, kind: str, method: str, url: str,
    check: Check, headers: dict[str, str] | None = None, **what: object,
) -> bool:  # fmt: skip
    """One request, its answer read whole and checked, recorded; True if it passed."""
    started = time.perf_counter()
    try:
        async with session.request(method, URL(url, encoded=True), headers=headers,
                                   allow_redirects=False) as r:  # fmt: skip
            body = await r.read()
            status, problem = r.status, check(r.status, body, r.headers)
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        rec.add(kind, started, 0, 0, False, url=url, error=repr(e)[:300], **what)
        return False
    if problem is None:
        rec.add(kind, started, status, len(body), True, **what)
        return True
    text = body[:300].decode(errors="replace")
    rec.add(kind, started, status, len(body), False, url=url, problem=problem, body=text, **what)
    return False


# The clients


@dataclass
class Load:
    warm: list[Image]
    rec: Recorder
    end: float
    cold: asyncio.Queue[Image]
    mix: dict[str, float]
    skipped_cold: int = 0

    def blob(self, rng: random.Random) -> tuple[Image, Blob]:
        image = rng.choice(self.warm)
        return image, rng.choice(image.blobs)


def invalid_cases(load: Load, rng: random.Random) -> list[tuple[str, str, str]]:
    """(case, method, path) of requests a registry must refuse with a 4xx."""
    image, blob = load.blob(rng)
    repo, unknown = image.repo, "sha256:" + os.urandom(32).hex()
    return [
        ("bad digest", "GET", f"/v2/{repo}/blobs/sha256:{blob.digest[7:20]}"),
        ("bad algorithm", "GET", f"/v2/{repo}/blobs/md5:{blob.digest[7:39]}"),
        ("unknown blob", "GET", f"/v2/{repo}/blobs/{unknown}"),
        ("unknown manifest digest", "GET", f"/v2/{repo}/manifests/{unknown}"),
        ("unknown tag", "HEAD", f"/v2/{repo}/manifests/no-such-tag-{rng.randrange(10**6)}"),
        ("unknown repository", "GET", f"/v2/soak/no-such-repo-{rng.randrange(10**6)}/manifests/v1"),
        ("malformed name", "GET", f"/v2/{repo.upper()}/manifests/{image.tag}"),
        ("dot segment", "GET", f"/v2/{repo}/../{repo}/blobs/{blob.digest}"),
        ("encoded slash", "GET", f"/v2/{repo}/manifests/..%2f..%2fetc"),
    ]


async def step(kind: str, session: aiohttp.ClientSession, load: Load, rng: random.Random) -> None:
    rec = load.rec
    host = rng.choice((HUB, QUAY))
    if kind == "blob":
        image, blob = load.blob(rng)
        url = f"https://{host}/v2/{image.repo}/blobs/{blob.digest}"
        await ask(session, rec, kind, "GET", url, body_is(blob.digest, blob.size))
    elif kind in ("head", "head ttl"):
        image = rng.choice(load.warm)  # docker.io: revalidated upstream; quay.io: TTL
        url = f"https://{HUB if kind == 'head' else QUAY}/v2/{image.repo}/manifests/{image.tag}"
        await ask(session, rec, kind, "HEAD", url, head_names(image.manifest), ACCEPT)
    elif kind == "manifest":
        image = rng.choice(load.warm)
        url = f"https://{host}/v2/{image.repo}/manifests/{image.manifest}"
        await ask(session, rec, kind, "GET", url, body_is(image.manifest), ACCEPT)
    elif kind == "invalid":
        case, method, path = rng.choice(invalid_cases(load, rng))
        await ask(session, rec, kind, method, f"https://{host}{path}", refused, ACCEPT, case=case)
    else:
        await cold_pull(session, load)


async def cold_pull(session: aiohttp.ClientSession, load: Load) -> None:
    """A pull of an image pushed upstream during the run: nothing of it is stored yet."""
    try:
        image = await asyncio.wait_for(load.cold.get(), timeout=1.0)
    except TimeoutError:
        load.skipped_cold += 1  # the pusher is behind: counted, not an error
        return
    base = f"https://{HUB}/v2/{image.repo}"
    if not await ask(session, load.rec, "cold manifest", "GET", f"{base}/manifests/{image.tag}",
                     body_is(image.manifest), ACCEPT):  # fmt: skip
        return
    for blob in image.blobs:
        url = f"{base}/blobs/{blob.digest}"
        await ask(session, load.rec, "cold blob", "GET", url, body_is(blob.digest, blob.size))


async def client(
    load: Load, ctx: ssl.SSLContext, source: str, per_client_rate: float, seed: int
) -> None:
    """One keep-alive connection; a step, then a pause (exponential, so the clients
    together offer `rate` steps a second, whatever the answers' latency)."""
    rng = random.Random(seed)
    kinds, weights = list(load.mix), list(load.mix.values())
    connector = aiohttp.TCPConnector(limit=1, ssl=ctx, local_addr=(source, 0),
                                     keepalive_timeout=120)  # fmt: skip
    async with aiohttp.ClientSession(connector=connector, timeout=TIMEOUT,
                                     auto_decompress=False) as session:  # fmt: skip
        await asyncio.sleep(max(0.0, load.rec.start_at - time.time()))
        await asyncio.sleep(rng.uniform(0, RAMP_S))  # build hosts do not start as one
        while time.time() < load.end:
            await step(rng.choices(kinds, weights)[0], session, load, rng)
            await asyncio.sleep(rng.expovariate(per_client_rate))


async def slow_reader(
    load: Load, ctx: ssl.SSLContext, source: str, kib_s: float, seed: int
) -> None:
    """GETs a blob reading it at `kib_s` KiB/s, over and over, on a socket with a small
    receive buffer so that regcache's side of the connection fills and waits."""
    rng = random.Random(seed)
    image, blob = min(((i, b) for i in load.warm for b in i.blobs),
                      key=lambda ib: abs(ib[1].size - SLOW_BLOB))  # fmt: skip
    await asyncio.sleep(max(0.0, load.rec.start_at - time.time()) + rng.uniform(0, 5))
    while time.time() < load.end:
        started = time.perf_counter()
        try:
            got, status, done = await _read_slowly(ctx, source, image, blob, kib_s, load.end)
        except (OSError, ValueError, asyncio.IncompleteReadError, TimeoutError) as e:
            load.rec.add("slow", started, 0, 0, False, error=repr(e)[:300], digest=blob.digest)
            await asyncio.sleep(1.0)
            continue
        ok = status == 200 and (not done or got == blob.size)
        load.rec.add("slow", started, status, got, ok, complete=done, digest=blob.digest)


async def _read_slowly(
    ctx: ssl.SSLContext, source: str, image: Image, blob: Blob, kib_s: float, end: float
) -> tuple[int, int, bool]:
    """(body bytes read, status, whether the whole body was read and matched)."""
    loop = asyncio.get_running_loop()
    (family, _, _, _, address), *_ = await loop.getaddrinfo(HUB, 443, type=socket.SOCK_STREAM)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 * KiB)
        sock.bind((source, 0))
        sock.setblocking(False)
        await asyncio.wait_for(loop.sock_connect(sock, address), 15)
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            sock=sock, ssl=ctx, server_hostname=HUB, limit=8 * KiB), 15)  # fmt: skip
    except BaseException:
        sock.close()
        raise
    try:
        writer.write(f"GET /v2/{image.repo}/blobs/{blob.digest} HTTP/1.1\r\nHost: {HUB}\r\n"
                     "User-Agent: soak-slow-reader\r\n\r\n".encode())  # fmt: skip
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 60)).decode("latin-1")
        status = int(head.split()[1])
        if status != 200:
            return 0, status, False
        if f"\r\ncontent-length: {blob.size}\r\n" not in head.lower():
            raise ValueError(f"slow read of {blob.digest}: no Content-Length {blob.size}")
        digest, got, started = hashlib.sha256(), 0, time.monotonic()
        while got < blob.size:
            if time.time() >= end:
                return got, status, False
            chunk = await asyncio.wait_for(reader.read(min(KiB, blob.size - got)), 60)
            if not chunk:
                raise asyncio.IncompleteReadError(b"", blob.size - got)
            digest.update(chunk)
            got += len(chunk)
            await asyncio.sleep(max(0.0, started + got / (kib_s * KiB) - time.monotonic()))
        if "sha256:" + digest.hexdigest() != blob.digest:
            raise ValueError(f"slow read of {blob.digest}: wrong bytes")
        return got, status, True
    finally:
        writer.transport.abort()


async def pusher(load: Load, ctx: ssl.SSLContext, repo: str, depth: int) -> int:
    """Keeps `depth` fresh images pushed upstream ahead of the cold pulls; their count."""
    rng, pushed = random.Random(repo), 0
    connector = aiohttp.TCPConnector(limit=4, ssl=ctx)
    async with aiohttp.ClientSession(connector=connector, timeout=TIMEOUT) as session:
        while time.time() < load.end:
            if load.cold.qsize() >= depth:
                await asyncio.sleep(0.05)
                continue
            started = time.perf_counter()
            sizes = [rng.choice(COLD_SIZES) for _ in range(2)]
            try:
                image = await push_image(session, repo, f"t{pushed}", sizes)
            except (aiohttp.ClientError, OSError, TimeoutError, RuntimeError) as e:
                load.rec.add("push", started, 0, 0, False, error=repr(e)[:300])
                await asyncio.sleep(1.0)
                continue
            load.cold.put_nowait(image)
            pushed += 1
    return pushed


async def run_http(args: argparse.Namespace) -> dict[str, object]:
    ctx = context(args.ca)
    warm = [Image(i["repo"], i["tag"], i["manifest"], [Blob(**b) for b in i["blobs"]])
            for i in json.loads(args.plan.read_text())]  # fmt: skip
    rec = Recorder(args.out, args.start_at)
    mix: dict[str, float] = dict(MIX)
    for part in filter(None, args.mix.split(",")):
        kind, weight = part.split("=")
        if kind not in MIX:
            raise SystemExit(f"--mix: {kind!r} is none of {', '.join(MIX)}")
        mix[kind] = float(weight)
    load = Load(warm, rec, args.start_at + args.seconds, asyncio.Queue(), mix)
    sources = [
        f"127.0.1.{1 + i % args.sources}"
        for i in range(args.first_client, args.first_client + args.clients)
    ]
    slow = {i * args.clients // args.slow for i in range(min(args.slow, args.clients))}
    per_client = args.rate / max(1, args.clients - len(slow))
    tasks = [
        slow_reader(load, ctx, src, args.slow_kib_s, args.seed + i) if i in slow
        else client(load, ctx, src, per_client, args.seed + i)
        for i, src in enumerate(sources)
    ]  # fmt: skip
    push = asyncio.create_task(pusher(load, ctx, f"soak/cold-{args.seed}", depth=8))
    try:
        await asyncio.gather(*tasks)
        pushed = await push
    finally:
        rec.close()
    return {"clients": args.clients, "slow_readers": len(slow), "pushed": pushed,
            "cold_skipped": load.skipped_cold, "cpu_s": cpu_s()}  # fmt: skip


async def prepare(args: argparse.Namespace) -> dict[str, object]:
    """Warm images upstream (pushed once), then each pulled through regcache under both
    names, so that blobs, manifests and tag mappings are all in its store."""
    ctx = context(args.ca)
    rng = random.Random(1)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx),
                                     timeout=TIMEOUT) as session:  # fmt: skip
        if not args.plan.exists():
            warm = []
            for n in range(args.images):
                sizes = [SLOW_BLOB, rng.choice(WARM_SIZES)] if n == 0 else \
                    [rng.choice(WARM_SIZES) for _ in range(2)]  # fmt: skip
                warm.append(await push_image(session, f"soak/warm-{n}", "v1", sizes))
            args.plan.write_text(json.dumps([asdict(i) for i in warm]))
        warm = [Image(i["repo"], i["tag"], i["manifest"], [Blob(**b) for b in i["blobs"]])
                for i in json.loads(args.plan.read_text())]  # fmt: skip
        rec = Recorder(args.out, time.time())
        try:
            for image in warm:
                for host in (HUB, QUAY):
                    base = f"https://{host}/v2/{image.repo}"
                    checks: list[Awaitable[bool]] = [
                        ask(session, rec, "prepull", "GET", f"{base}/manifests/{image.tag}",
                            body_is(image.manifest), ACCEPT),
                        *(ask(session, rec, "prepull", "GET", f"{base}/blobs/{b.digest}",
                              body_is(b.digest, b.size)) for b in image.blobs),
                    ]  # fmt: skip
                    if not all(await asyncio.gather(*checks)):
                        raise SystemExit(f"pre-pull of {host}/{image.repo} failed: see {args.out}")
        finally:
            rec.close()
    return {"images": len(warm), "bytes": sum(b.size for i in warm for b in i.blobs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["prepare", "http"])
    parser.add_argument("--plan", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True, help="JSON lines, one per answer")
    parser.add_argument("--ca", action="append", default=[])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--clients", type=int, default=150)
    parser.add_argument("--first-client", type=int, default=0)
    parser.add_argument("--sources", type=int, default=16, help="client source addresses")
    parser.add_argument("--slow", type=int, default=8, help="of the clients, slow readers")
    parser.add_argument("--slow-kib-s", type=float, default=8.0)
    parser.add_argument("--rate", type=float, default=150.0, help="steps a second, all clients")
    parser.add_argument("--start-at", type=float, default=0.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mix", default="", help="weights replacing MIX's, e.g. cold=1,blob=60")
    args = parser.parse_args()
    result = asyncio.run(prepare(args) if args.mode == "prepare" else run_http(args))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
