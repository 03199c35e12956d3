"""Part `streams` (issue #20, target 3): regcache's memory against concurrency.

N concurrent GETs of one large layer (`--streams-layer-mib`), each on its own TLS
connection (`bench/client.py crowd`), for N = 8, 16, 32, 64: warm (the layer in the
store) and cold (a fresh regcache: one fill from upstream, N readers streaming it as it
fills). Each N: peak RSS (VmHWM, reset before), and RSS just before (idle, after the
start-up's collection). The slope of peak RSS against N (least squares) is the memory
each additional stream costs.
"""

from __future__ import annotations

import statistics
import time

from bench.images import Image
from bench.peers import HUB, Bench, Results, Server
from bench.soakreport import table

STREAMS = (8, 16, 32, 64)
MiB = 1 << 20


def measure_streams(bench: Bench, r: Results, image: Image, reps: int) -> None:
    url = f"https://{HUB}/v2/bench/streams/blobs/{image.layers[0]}"
    size = image.layer_sizes[0]
    for _ in range(reps):
        warm = bench.regcache()
        bench.client("crowd", url, "--n", "1")  # the layer into the store
        for n in STREAMS:
            _streams(bench, r, warm, url, size, n, "warm")
        bench.ns.stop(warm.proc)
        for n in STREAMS:
            cold = bench.regcache()
            _streams(bench, r, cold, url, size, n, "cold")
            bench.ns.stop(cold.proc)


def _streams(bench: Bench, r: Results, server: Server, url: str, size: int, n: int,
             phase: str) -> None:  # fmt: skip
    time.sleep(1.0)  # settled: what a previous run left is freed
    r.add(f"streams {phase} {n} idle rss", server.rss_mib())
    server.reset_peak()
    clients = bench.client("crowd", url, "--n", str(n))["clients"]
    assert isinstance(clients, list)
    if any(int(c["bytes"]) != size for c in clients):
        raise RuntimeError(f"streams {phase} {n}: a client got a short body")
    r.add(f"streams {phase} {n} peak rss", server.peak_rss_mib())


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y against x."""
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)


def report_streams(r: Results, image: Image, reps: int) -> list[list[str]]:
    """Prints the table; returns the target rows."""
    mib = image.layer_sizes[0] / MiB
    print(f"### (g) concurrent GETs of one {mib:.0f} MiB layer: regcache's RSS, MiB "
          f"(median of {reps})\n")  # fmt: skip
    rows, targets = [], []
    for phase in ("warm", "cold"):
        for n in STREAMS:
            idle, peak = r[f"streams {phase} {n} idle rss"], r[f"streams {phase} {n} peak rss"]
            rows.append([phase, str(n), f"{idle:.0f}", f"{peak:.0f}"])
        per_stream = slope([(n, r[f"streams {phase} {n} peak rss"]) for n in STREAMS])
        rows.append([phase, "slope", "", f"{per_stream:.2f} MiB per stream"])
        at_32 = r[f"streams {phase} 32 peak rss"]
        targets.append([f"{phase}: peak RSS, 32 streams", f"{at_32:.0f} MiB", "", "≤ 100 MiB"])
        targets.append([f"{phase}: MiB per additional stream", f"{per_stream:.2f}", "", "≤ 0.5"])
    table(["phase", "streams", "RSS before", "peak RSS"], rows)
    return targets
