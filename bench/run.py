"""regcache side by side with distribution's pull-through proxy, nginx and dnsmasq.

Everything runs in a network namespace this script creates (see bench/peers.py for who
listens where); clients reach regcache through its DNS under real registry names, as on
a build host. Prints Markdown tables of medians and the ratios the targets are stated
in. See bench/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.breakeven import measure_break_even, report_break_even  # noqa: E402
from bench.images import Image, write_image  # noqa: E402
from bench.peers import (  # noqa: E402
    DNSMASQ_IP,
    FORWARDED,
    GHCR,
    HUB,
    NGINX,
    NGINX_CACHE,
    NGINX_CACHE_IP,
    PROXY,
    QUAY,
    REGCACHE_IP,
    RESOLVER_IP,
    UPSTREAM,
    WAN,
    WAN_IP,
    Bench,
    Results,
    Server,
)
from bench.shared import SharedResults, measure_shared, report_shared  # noqa: E402
from bench.sharedpeers import measure_concurrent, report_concurrent  # noqa: E402
from bench.soak import measure_soak  # noqa: E402
from bench.soakreport import SoakReport, table  # noqa: E402
from bench.streams import measure_streams, report_streams  # noqa: E402
from tests.e2e.netns import Netns  # noqa: E402
from tests.e2e.pki import TestCa  # noqa: E402

MiB, GiB = 1 << 20, 1 << 30
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def measure_pulls(bench: Bench, r: Results, upstream: Server, big: Image, reps: int) -> None:
    """(a) warm and (b) cold skopeo pulls, direct and through each cache; server CPU
    and peak RSS per phase (f); upstream bytes per pull through each cache (e)."""
    for _ in range(reps):
        bench.settle(f"{UPSTREAM}/bench/big:v1")
        r.add("direct", bench.pull(f"{UPSTREAM}/bench/big:v1"))
        peers: tuple[tuple[str, Callable[[], Server], str], ...] = (
            ("regcache", bench.regcache, HUB),
            ("distribution", bench.proxy, PROXY),
            ("nginx proxy_cache", bench.nginx_cache, NGINX_CACHE),
        )
        for name, start, host in peers:
            bench.settle(f"{host}/bench/big:v1", start)
            server = start()  # fresh, empty cache: the first pull is cold
            for phase in ("cold", "warm"):
                server.reset_peak()
                (cpu, user), sent = server.cpu_and_user_s(), upstream.sent_bytes()
                with bench.profiled(server, f"{name}-{phase}-pull"):
                    r.add(f"{name} {phase}", bench.pull(f"{host}/bench/big:v1"))
                cpu_after, user_after = server.cpu_and_user_s()
                r.add(f"{name} {phase} cpu/GiB", (cpu_after - cpu) / (big.size / GiB))
                r.add(f"{name} {phase} user/GiB", (user_after - user) / (big.size / GiB))
                r.add(f"{name} {phase} rss", server.peak_rss_mib())
                r.add(f"{name} {phase} upstream", (upstream.sent_bytes() - sent) / big.size)
            bench.ns.stop(server.proc)
        r.add("sha256 cpu/GiB", sha256_cpu_s_per_gib())


def sha256_cpu_s_per_gib() -> float:
    """CPU seconds this machine takes to SHA-256 a GiB (OpenSSL, through hashlib, as
    regcache verifies): the part of a verifying cache's cold CPU nginx never spends."""
    piece, pieces = os.urandom(1 << 20), 256
    digest = hashlib.sha256()
    started = time.process_time()
    for _ in range(pieces):
        digest.update(piece)
    return (time.process_time() - started) * (GiB / (pieces * len(piece)))


def measure_wan(bench: Bench, r: Results, big: Image, reps: int, mbit: int) -> None:
    """(b) again with the upstream across a rate-limited link, as from a gateway: cold
    through regcache against direct."""
    with Netns(REGCACHE_IP) as wan:
        bench.wan_upstream(wan, mbit)
        for _ in range(reps):
            r.add("wan direct", bench.pull(f"{WAN}/bench/big:v1"))
            regcache = bench.regcache()
            cpu = regcache.cpu_s()
            with bench.profiled(regcache, "regcache-wan-cold-pull"):
                r.add("wan regcache cold", bench.pull(f"{GHCR}/bench/big:v1"))
            r.add("wan regcache cold cpu/GiB", (regcache.cpu_s() - cpu) / (big.size / GiB))
            bench.ns.stop(regcache.proc)


def measure_serving(bench: Bench, r: Results, big: Image, reps: int, n: int) -> None:
    """(c) blob GET throughput against nginx on the same files; (d) manifest latency
    against distribution."""
    regcache = bench.regcache()
    bench.pull(f"{HUB}/bench/big:v1")  # fills the store nginx serves from as well
    bench.pull(f"{QUAY}/bench/big:v1")  # the tag mapping with a TTL
    nginx = bench.nginx()
    # The layer nearest 256 MiB, the same for both servers.
    blob_size, blob = min(
        zip(big.layer_sizes, big.layers, strict=True), key=lambda b: abs(b[0] - 256 * MiB)
    )
    for _ in range(reps):
        for clients in (1, 8, 32):
            per_client = max(1, (1 * GiB) // (clients * blob_size))
            for name, server, host in (("regcache", regcache, HUB), ("nginx", nginx, NGINX)):
                url = f"https://{host}/v2/bench/big/blobs/{blob}"
                cpu = server.cpu_s()
                with bench.profiled(server, f"{name}-blob-{clients}"):
                    wall, got = bench.curl_throughput(url, clients, per_client)
                r.add(f"blob {clients} {name} MB/s", got / wall / 1e6)
                r.add(f"blob {clients} {name} cpu/GiB", (server.cpu_s() - cpu) / (got / GiB))
    r.add("blob size MiB", blob_size / MiB)
    bench.ns.stop(nginx.proc)
    proxy = bench.proxy()
    bench.pull(f"{PROXY}/bench/big:v1")
    cases = (
        ("regcache", "digest", f"https://{HUB}/v2/bench/big/manifests/{big.manifest}"),
        ("regcache", "tag revalidated", f"https://{HUB}/v2/bench/big/manifests/v1"),
        ("regcache", "tag within ttl", f"https://{QUAY}/v2/bench/big/manifests/v1"),
        ("distribution", "digest", f"https://{PROXY}/v2/bench/big/manifests/{big.manifest}"),
        ("distribution", "tag", f"https://{PROXY}/v2/bench/big/manifests/v1"),
    )
    for name, case, url in cases:
        for method in ("GET", "HEAD"):
            server = regcache if name == "regcache" else proxy
            with bench.profiled(server, f"{name}-manifest-{case}-{method}".replace(" ", "-")):
                out = bench.client("latency", url, "--method", method, "--n", str(n))
            for stat in ("p50_ms", "p99_ms"):
                r.add(f"manifest {name} {case} {method} {stat}", float(out[stat]))  # type: ignore[arg-type]
    bench.ns.stop(proxy.proc)
    bench.ns.stop(regcache.proc)


def measure_crowds(
    bench: Bench, r: Results, upstream: Server, images: dict[str, Image], crowd: int
) -> None:
    """(e) `crowd` concurrent cold pulls: upstream bytes / image size, followers' time
    to first byte; (f) peak RSS with small and huge layers."""
    mid = images["crowd"]
    for name, start, host in (
        ("regcache", bench.regcache, HUB),
        ("distribution", bench.proxy, PROXY),
    ):
        server = start()
        before = upstream.sent_bytes()
        r.add(f"crowd {name} wall", bench.concurrent_pulls(f"{host}/bench/crowd:v1", crowd))
        r.add(f"crowd {name} upstream ratio", (upstream.sent_bytes() - before) / mid.size)
        bench.ns.stop(server.proc)
    for key, image in images.items():
        if not key.startswith("layer"):
            continue
        regcache = bench.regcache()
        r.add(f"{key} idle rss", regcache.peak_rss_mib())
        regcache.reset_peak()
        before = upstream.sent_bytes()
        url = f"https://{HUB}/v2/bench/{key}/blobs/{image.layers[0]}"
        clients = bench.client("crowd", url, "--n", str(crowd))["clients"]
        assert isinstance(clients, list)
        ttfb = sorted(float(c["ttfb_s"]) for c in clients)
        if any(int(c["bytes"]) != image.layer_sizes[0] for c in clients):
            raise RuntimeError(f"{key}: a client got a short body")
        r.add(f"{key} upstream ratio", (upstream.sent_bytes() - before) / image.layer_sizes[0])
        r.add(f"{key} leader ttfb ms", ttfb[0] * 1000)
        r.add(f"{key} followers ttfb p50 ms", statistics.median(ttfb[1:]) * 1000)
        r.add(f"{key} followers ttfb max ms", ttfb[-1] * 1000)
        r.add(f"{key} wall", max(float(c["total_s"]) for c in clients))
        r.add(f"{key} peak rss", regcache.peak_rss_mib())
        bench.ns.stop(regcache.proc)


def measure_dns(bench: Bench, r: Results, seconds: int) -> None:
    """Queries per second and CPU per query, regcache against dnsmasq (its cache on, as
    regcache's): answered locally (an intercepted registry name; dnsmasq's `address=`),
    forwarded once and then answered from the cache (one name with a 300 s TTL, asked
    again and again), and forwarded every time (a new name for every query, so nothing
    is cached or coalesced), all to the same resolver."""
    resolver = bench.dnsmasq(RESOLVER_IP, "--address=/example.test/192.0.2.99",
                             "--local-ttl=300")  # fmt: skip
    reference = bench.dnsmasq(DNSMASQ_IP, f"--address=/docker.io/{REGCACHE_IP}",
                              f"--server={RESOLVER_IP}", "--cache-size=10000")  # fmt: skip
    regcache = bench.regcache()
    unique = bench.tmp / "queries-unique"
    with unique.open("w") as f:  # more names than the fastest server answers in the time
        f.writelines(f"u{i}.{FORWARDED} A\n" for i in range(250_000 * seconds))
    kinds: tuple[tuple[str, str | Path], ...] = (
        ("local", HUB), ("cached", FORWARDED), ("uncached", unique))  # fmt: skip
    for name, address in (("regcache", REGCACHE_IP), ("dnsmasq", DNSMASQ_IP)):
        server = regcache if name == "regcache" else reference
        for kind, names in kinds:
            before = server.cpu_s()
            with bench.profiled(server, f"{name}-dns-{kind}"):
                qps = bench.dnsperf(address, names, seconds)
            r.add(f"dns {name} {kind}", qps)
            r.add(f"dns {name} {kind} cpu us", (server.cpu_s() - before) / (qps * seconds) * 1e6)
    # The ceiling of the forwarded rates: the resolver itself, asked directly.
    r.add("dns resolver uncached", bench.dnsperf(RESOLVER_IP, unique, seconds))
    for server in (regcache, reference, resolver):
        bench.ns.stop(server.proc)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--layers-mib", default="512,256,256,1", help="the >= 1 GiB image")
    parser.add_argument("--crowd-layers-mib", default="64,32,4", help="image of the crowd pulls")
    parser.add_argument("--crowd", type=int, default=16, help="concurrent cold pulls")
    parser.add_argument("--rss-layers-mib", default="100,2048", help="layer sizes for RSS runs")
    parser.add_argument("--streams-layer-mib", type=int, default=128,
                        help="the layer of part streams (concurrent GETs)")  # fmt: skip
    parser.add_argument("--requests", type=int, default=2000, help="manifest requests per case")
    parser.add_argument("--dns-seconds", type=int, default=10)
    parser.add_argument("--wan-mbit", type=int, default=800, help="the WAN link's rate")
    parser.add_argument("--break-even-mbit", default="2000,2500,3000,4000",
                        help="link rates of part breakeven")  # fmt: skip
    parser.add_argument("--only", default="pulls,wan,breakeven,serving,crowds,dns,streams",
                        help="parts to run (and soak, shared: not run unless named)")  # fmt: skip
    parser.add_argument("--profile", type=Path, help="py-spy profiles of each phase, to here")
    parser.add_argument(
        "--work", type=Path, default=None, help="scratch folder (default: /var/tmp)"
    )
    add_soak_arguments(parser)
    args = parser.parse_args()
    # /var/tmp: on disk (not tmpfs), as a gateway's store would be.
    work = args.work or Path("/var/tmp")  # noqa: S108 - a private mkdtemp below it
    tmp = Path(tempfile.mkdtemp(prefix="regcache-bench-", dir=work))
    try:
        run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def add_soak_arguments(parser: argparse.ArgumentParser) -> None:
    soak = parser.add_argument_group("soak (--only soak)")
    soak.add_argument("--soak-seconds", type=int, default=600, help="length of each phase")
    soak.add_argument("--soak-clients", type=int, default=300, help="keep-alive HTTPS clients")
    soak.add_argument("--soak-rate", type=float, default=300.0,
                      help="steps a second the clients offer together")  # fmt: skip
    soak.add_argument("--soak-slow", type=int, default=16, help="of the clients, slow readers")
    soak.add_argument("--soak-slow-kib-s", type=float, default=8.0, help="their read rate")
    soak.add_argument("--soak-procs", type=int, default=2, help="HTTP load processes")
    soak.add_argument("--soak-sources", type=int, default=16,
                      help="source addresses the clients spread over (build hosts)")  # fmt: skip
    soak.add_argument("--soak-images", type=int, default=16, help="warm images")
    soak.add_argument("--soak-mix", default="",
                      help="step weights replacing the defaults (bench/soakload.py MIX), "
                           "e.g. cold=1,blob=60")  # fmt: skip
    soak.add_argument("--soak-dns-qps", type=float, default=200.0, help="DNS queries/s (UDP)")
    soak.add_argument("--soak-hostile", action="store_true",
                      help="a second phase with the hostile mixes alongside")  # fmt: skip
    soak.add_argument("--soak-hellos", type=int, default=300,
                      help="hostile: connections sitting on a partial ClientHello "
                           "(0: none)")  # fmt: skip
    soak.add_argument("--soak-dns-tcp-max", type=int, default=256,
                      help="regcache's dns.tcp_max_connections in the soak")  # fmt: skip
    soak.add_argument("--soak-dns-holds", type=int, default=None,
                      help="hostile: DNS TCP connections held from outside allow_clients "
                           "(default: tcp_max + 64; 0: none)")  # fmt: skip
    soak.add_argument("--soak-sample-s", type=float, default=5.0, help="RSS/fd sampling")
    soak.add_argument("--soak-bucket-s", type=int, default=60, help="latency table rows")
    soak.add_argument("--soak-warmup-s", type=float, default=15.0,
                      help="left out of the latency summaries (clients connecting)")  # fmt: skip
    soak.add_argument("--keep", action="store_true",
                      help="keep the soak's logs and raw answers (kept on failure)")  # fmt: skip


def rates(args: argparse.Namespace) -> list[int]:
    return [int(x) for x in args.break_even_mbit.split(",")]


def image_sizes(args: argparse.Namespace, parts: list[str]) -> dict[str, list[int]]:
    """The generated images the chosen parts pull (the soak pushes its own)."""
    sizes = {}
    if {"pulls", "wan", "breakeven", "serving", "shared"} & set(parts):
        sizes["big"] = [int(x) * MiB for x in args.layers_mib.split(",")]
    if "streams" in parts:
        sizes["streams"] = [args.streams_layer_mib * MiB]
    if "crowds" in parts:
        sizes["crowd"] = [int(x) * MiB for x in args.crowd_layers_mib.split(",")]
        for mib in args.rss_layers_mib.split(","):
            sizes[f"layer{mib}"] = [int(mib) * MiB]
    return sizes


def run(args: argparse.Namespace, tmp: Path) -> None:
    ca = TestCa(tmp)
    started = time.monotonic()
    with Netns(REGCACHE_IP) as ns:
        (ns.etc / "hosts").write_text(
            f"127.0.0.1 localhost\n127.0.0.3 {UPSTREAM}\n127.0.0.4 {PROXY}\n127.0.0.5 {NGINX}\n"
            f"{WAN_IP} {WAN}\n{NGINX_CACHE_IP} {NGINX_CACHE}\n"
        )
        bench = Bench(ns, tmp, ca, args.profile)
        upstream = bench.upstream()
        parts = args.only.split(",")
        images = {}
        for name, layer_sizes in image_sizes(args, parts).items():
            layout = tmp / f"image-{name}"
            images[name] = write_image(layout, layer_sizes)
            bench.copy(f"oci:{layout}:v1", f"docker://{UPSTREAM}/bench/{name}:v1")
            shutil.rmtree(layout)
        r = Results()
        soak: SoakReport | None = None
        shared: SharedResults | None = None
        if "pulls" in parts:
            measure_pulls(bench, r, upstream, images["big"], args.reps)
        if "wan" in parts:
            measure_wan(bench, r, images["big"], args.reps, args.wan_mbit)
        if "breakeven" in parts:
            measure_break_even(bench, r, args.reps, rates(args))
        if "serving" in parts:
            measure_serving(bench, r, images["big"], args.reps, args.requests)
        if "crowds" in parts:
            measure_crowds(bench, r, upstream, images, args.crowd)
        if "dns" in parts:
            measure_dns(bench, r, args.dns_seconds)
        if "streams" in parts:
            measure_streams(bench, r, images["streams"], args.reps)
        if "soak" in parts:
            soak = measure_soak(bench, upstream, args)
        if "shared" in parts:
            big, reps = images["big"], args.reps
            shared = measure_shared(bench, upstream, big, reps, lambda r, a, b: measure_concurrent(
                bench, r, big, a, b, reps, args.wan_mbit))  # fmt: skip
    if r.samples:
        report(r, images, args)
    if shared is not None:
        report_shared(shared, images["big"], args.layers_mib, args.reps)
        report_concurrent(shared, images["big"], args.reps)
    if soak is not None:
        soak.print()
    print(f"\n(bench took {time.monotonic() - started:.0f} s)")


def report(r: Results, images: dict[str, Image], args: argparse.Namespace) -> None:
    print(f"\n## regcache benchmark: medians of {args.reps} runs, loopback TLS, 2 cores\n")
    targets: list[list[str]] = []

    def ratio(what: str, ours: str, peer: str, target: str, digits: int = 2) -> None:
        if ours in r and peer in r:
            values = f"{r[ours]:.{digits}f} / {r[peer]:.{digits}f}"
            targets.append([what, values, f"{r[ours] / r[peer]:.2f}", target])

    if "direct" in r:
        mib = images["big"].size / MiB
        print(
            f"### (a, b, f) skopeo copy of a {mib:.0f} MiB image ({args.layers_mib} MiB layers)\n"
        )
        rows = [["direct from upstream", f"{r['direct']:.2f}", "", "", "", ""]]
        for key in ("regcache cold", "regcache warm", "distribution cold", "distribution warm",
                    "nginx proxy_cache cold", "nginx proxy_cache warm"):  # fmt: skip
            cpu, user = r[f"{key} cpu/GiB"], r[f"{key} user/GiB"]
            rss, sent = r[f"{key} rss"], r[f"{key} upstream"]
            rows.append([key, f"{r[key]:.2f}", f"{cpu:.2f}", f"{user:.2f}", f"{rss:.0f}",
                         f"{sent:.2f}"])  # fmt: skip
        table(["pull", "wall s", "server CPU s/GiB", "of it user", "server peak RSS MiB",
               "upstream bytes / image size"], rows)  # fmt: skip
        ratio("warm wall, regcache / distribution", "regcache warm", "distribution warm", "≤ 0.85")
        ratio("warm CPU/GiB, regcache / distribution", "regcache warm cpu/GiB",
              "distribution warm cpu/GiB", "≤ 1.0")  # fmt: skip
        ratio("cold wall, regcache / direct", "regcache cold", "direct", "≤ 1.4")
        ratio("cold wall, distribution / direct", "distribution cold", "direct", "(peer)")
        ratio("cold CPU/GiB, regcache / distribution", "regcache cold cpu/GiB",
              "distribution cold cpu/GiB", "report")  # fmt: skip
        ratio("cold CPU/GiB, regcache / nginx proxy_cache", "regcache cold cpu/GiB",
              "nginx proxy_cache cold cpu/GiB", "≤ 1.0")  # fmt: skip
        ratio("cold user CPU/GiB, regcache / nginx proxy_cache", "regcache cold user/GiB",
              "nginx proxy_cache cold user/GiB", "report")  # fmt: skip
        cold = r["regcache cold cpu/GiB"]
        # What nginx would spend if it verified what it stores.
        verifying = r["nginx proxy_cache cold cpu/GiB"] + r["sha256 cpu/GiB"]
        targets.append(["cold CPU/GiB, regcache / (nginx proxy_cache + SHA-256 of a GiB)",
                        f"{cold:.2f} / {verifying:.2f}", f"{cold / verifying:.2f}",
                        "report"])  # fmt: skip
        ratio("cold wall, nginx proxy_cache / direct", "nginx proxy_cache cold", "direct",
              "(peer)")  # fmt: skip
    if "wan direct" in r:
        print(f"### (b) cold pull with the upstream across a {args.wan_mbit} Mbit/s link\n")
        rows = [["direct from upstream", f"{r['wan direct']:.2f}", ""],
                ["regcache cold", f"{r['wan regcache cold']:.2f}",
                 f"{r['wan regcache cold cpu/GiB']:.2f}"]]  # fmt: skip
        table(["pull", "wall s", "server CPU s/GiB"], rows)
        ratio(f"cold wall across {args.wan_mbit} Mbit/s, regcache / direct", "wan regcache cold",
              "wan direct", "≤ 1.1")  # fmt: skip
    if "blob size MiB" in r:
        print(f"### (c) blob GET over TLS with curl, {r['blob size MiB']:.0f} MiB blob\n")
        rows = []
        for n in (1, 8, 32):
            ours, peer = f"blob {n} regcache", f"blob {n} nginx"
            rows.append([str(n), f"{r[ours + ' MB/s']:.0f}", f"{r[peer + ' MB/s']:.0f}",
                         f"{r[ours + ' cpu/GiB']:.2f}", f"{r[peer + ' cpu/GiB']:.2f}"])  # fmt: skip
            target = "≥ 0.8" if n == 1 else "report"
            ratio(f"blob MB/s, {n} client(s), regcache / nginx", f"{ours} MB/s", f"{peer} MB/s",
                  target, 0)  # fmt: skip
        table(["clients", "regcache MB/s", "nginx MB/s", "regcache CPU s/GiB",
               "nginx CPU s/GiB"], rows)  # fmt: skip
        print(f"### (d) manifest latency, {args.requests} requests, one keep-alive connection\n")
        rows = []
        cases = sorted({k.rsplit(" ", 2)[0] for k in r.samples if k.startswith("manifest ")})
        for case in cases:
            server, reference = case.removeprefix("manifest ").split(" ", 1)
            cells = [
                f"{r[f'{case} {m} {s}']:.2f}" for m in ("GET", "HEAD") for s in ("p50_ms", "p99_ms")
            ]
            rows.append([server, reference, *cells])
        table(
            ["server", "reference", "GET p50 ms", "GET p99 ms", "HEAD p50 ms", "HEAD p99 ms"], rows
        )
        ours, peer = "manifest regcache", "manifest distribution"
        for m in ("GET", "HEAD"):
            for s in ("p50_ms", "p99_ms"):
                ratio(f"manifest by digest, {m} {s[:3]}, regcache / distribution",
                      f"{ours} digest {m} {s}", f"{peer} digest {m} {s}", "≤ 1.0")  # fmt: skip
            p50 = f"{m} p50_ms"
            ratio(f"manifest by tag revalidated, {m} p50, regcache / distribution by tag",
                  f"{ours} tag revalidated {p50}", f"{peer} tag {p50}", "≤ 0.5")  # fmt: skip
            ratio(f"manifest by tag within TTL, {m} p50, regcache / distribution by digest",
                  f"{ours} tag within ttl {p50}", f"{peer} digest {p50}", "≤ 0.5")  # fmt: skip
    if "crowd regcache wall" in r:
        mib = images["crowd"].size / MiB
        print(f"### (e) {args.crowd} concurrent cold skopeo pulls of a {mib:.0f} MiB image\n")
        rows = [[name, f"{r[f'crowd {name} wall']:.2f}", f"{r[f'crowd {name} upstream ratio']:.2f}"]
                for name in ("regcache", "distribution")]  # fmt: skip
        table(["cache", "wall s", "upstream bytes / image size"], rows)
        print(f"### (e, f) {args.crowd} concurrent cold GETs of one blob through regcache\n")
        rows = []
        for key in (k for k in images if k.startswith("layer")):
            rows.append([key.removeprefix("layer") + " MiB", f"{r[f'{key} upstream ratio']:.2f}",
                         f"{r[f'{key} leader ttfb ms']:.0f}",
                         f"{r[f'{key} followers ttfb p50 ms']:.0f}",
                         f"{r[f'{key} followers ttfb max ms']:.0f}", f"{r[f'{key} wall']:.1f}",
                         f"{r[f'{key} idle rss']:.0f}", f"{r[f'{key} peak rss']:.0f}"])  # fmt: skip
        header = ["layer", "upstream bytes / size", "leader TTFB ms", "followers TTFB p50 ms",
                  "followers TTFB max ms", "wall s", "idle RSS MiB", "peak RSS MiB"]  # fmt: skip
        table(header, rows)
    if "dns regcache local" in r:
        print(f"### DNS: dnsperf, {args.dns_seconds} s, 4 clients, queries/s\n")
        rows = []
        for kind in ("local", "cached", "uncached"):
            rows.append([kind] + [f"{r[f'dns {name} {kind}{unit}']:.{digits}f}"
                                  for name in ("regcache", "dnsmasq")
                                  for unit, digits in (("", 0), (" cpu us", 1))])  # fmt: skip
            goal = {"cached": "≥ 0.4", "uncached": "regcache ≥ 10000 q/s"}.get(kind, "report")
            ratio(f"DNS {kind} qps, regcache / dnsmasq", f"dns regcache {kind}",
                  f"dns dnsmasq {kind}", goal, 0)  # fmt: skip
        table(["answer", "regcache q/s", "CPU µs/query", "dnsmasq q/s", "CPU µs/query"], rows)
        print(f"The resolver asked directly, a new name every query: "
              f"{r['dns resolver uncached']:.0f} q/s\n")  # fmt: skip
    if f"breakeven {rates(args)[0]} direct" in r:
        targets += report_break_even(r, rates(args), args.reps)
    if "streams warm 8 peak rss" in r:
        targets += report_streams(r, images["streams"], args.reps)
    if targets:
        print("### Ratios and targets\n")
        table(["ratio", "regcache / peer", "ratio", "target"], targets)


if __name__ == "__main__":
    main()
