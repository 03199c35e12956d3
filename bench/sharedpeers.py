"""Part `shared`, second half (issue #19): the same cold image pulled through gateways A
and B at once, both fresh, sharing one bucket, the upstream across the rate-limited WAN
link of part `wan`: with `peers` (each blob filled by its owner, the other gateway
streaming it from the owner as it fills) and without (the bucket's lease: the gateway
that loses a blob's lease waits for the other's upload to complete, then reads it from
the bucket). See bench/README.md."""

from __future__ import annotations

import threading
import time

from bench.images import Image
from bench.peers import GHCR, REGCACHE_IP, Bench, Server
from bench.shared import (
    ADMIN_PORT,
    Gateway,
    SharedResults,
    blob_bytes,
    end_rep,
    make_bucket,
    notable,
    pull,
    start_regcache,
)
from bench.soakreport import table
from tests.e2e.netns import Netns

MODES = ("peers", "lease")
PEERED_WAIT_S = 30.0


def measure_concurrent(
    bench: Bench, r: SharedResults, image: Image, a: Gateway, b: Gateway, reps: int, mbit: int,
) -> None:  # fmt: skip
    """`reps` times each mode, fresh gateways and bucket every time: walls of the two
    pulls, upstream blob bytes over the image's size, and relays or lease waits."""
    r.wan_mbit = mbit
    with Netns(REGCACHE_IP) as wan:
        upstream = bench.wan_upstream(wan, mbit)
        try:
            _modes(bench, r, upstream, image, a, b, reps)
        finally:
            wan.stop(upstream.proc)


def _modes(
    bench: Bench, r: SharedResults, upstream: Server, image: Image, a: Gateway, b: Gateway,
    reps: int,
) -> None:  # fmt: skip
    for rep in range(1, reps + 1):
        for mode in MODES:
            folder = bench.tmp / f"concurrent-{mode}-rep{rep}"
            folder.mkdir()
            bucket = make_bucket(bench)
            members = [f"{a.ip}:443", f"{b.ip}:443"] if mode == "peers" else None
            try:
                for gw in (a, b):
                    gw.server = start_regcache(bench, gw, folder, bucket, peers=members)
                if members:
                    peered(bench, (a, b))
                one_concurrent(bench, r, upstream, image, (a, b), mode)
                for gw in (a, b):
                    notable(r, rep, gw, bench)
            finally:
                end_rep(bench, (a, b), bucket, folder)


def peered(bench: Bench, gateways: tuple[Gateway, ...]) -> None:
    """Until each gateway has found the other up (bounded)."""
    deadline = time.monotonic() + PEERED_WAIT_S
    while time.monotonic() < deadline:
        texts = [bench.ns.run("curl", "-s", f"http://{gw.ip}:{ADMIN_PORT}/readyz").stdout
                 for gw in gateways]  # fmt: skip
        if not any('"peer ' in text for text in texts):
            return
        time.sleep(0.2)
    raise RuntimeError("the gateways did not find each other up")


def one_concurrent(
    bench: Bench, r: SharedResults, upstream: Server, image: Image, pair: tuple[Gateway, ...],
    mode: str,
) -> None:  # fmt: skip
    ref = f"{GHCR}/bench/big:v1"
    walls: dict[str, float] = {}
    errors: list[BaseException] = []
    sent = blob_bytes(upstream)

    def one(gw: Gateway) -> None:
        try:
            walls[gw.name] = pull(bench, gw.netns, ref, into=f"pulled-{gw.name}")
        except BaseException as e:  # noqa: BLE001 - reported below, after both end
            errors.append(e)

    threads = [threading.Thread(target=one, args=(gw,)) for gw in pair]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=1800)
    if errors:
        raise errors[0]
    for name, wall in walls.items():
        r.add(f"{mode} {name}", wall)
    r.add(f"{mode} slower", max(walls.values()))
    r.add(f"{mode} upstream bytes", (blob_bytes(upstream) - sent) / image.size)
    counts = {gw.name: counters(bench, gw) for gw in pair}
    r.add(f"{mode} relays", sum(c.get("regcache_peer_relays_total", 0) for c in counts.values()))
    r.add(f"{mode} waits", sum(c.get("regcache_shared_waits_total", 0) for c in counts.values()))


def counters(bench: Bench, gw: Gateway) -> dict[str, float]:
    """The gateway's relay and tier counters, summed over their labels."""
    text = bench.ns.run("curl", "-sf", f"http://{gw.ip}:{ADMIN_PORT}/metrics").stdout
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("regcache_peer_relays_total", "regcache_shared_waits_total")):
            name, value = line.split("{")[0].split(" ")[0], float(line.rsplit(" ", 1)[1])
            found[name] = found.get(name, 0) + value
    return found


def report_concurrent(r: SharedResults, image: Image, reps: int) -> None:
    if "peers slower" not in r.samples:
        return
    mib = image.size / (1 << 20)
    print(f"\n#### The same cold {mib:.0f} MiB image through A and B at once, the upstream "
          f"across a {r.wan_mbit} Mbit/s link, fresh gateways and bucket each run (medians of "
          f"{reps} [min, max])\n")  # fmt: skip
    rows = [[mode, r.cell(f"{mode} a"), r.cell(f"{mode} b"), r.cell(f"{mode} slower"),
             r.cell(f"{mode} upstream bytes"), r.cell(f"{mode} relays", 0),
             r.cell(f"{mode} waits", 0)] for mode in MODES]  # fmt: skip
    rows[0][0] = "peers (each blob streamed from its owner)"
    rows[1][0] = "no peers (the bucket's lease)"
    table(["", "A wall s", "B wall s", "slower pull s", "upstream blob bytes / image",
           "relays", "lease waits"], rows)  # fmt: skip
    ratio = r.median("lease slower") / r.median("peers slower")
    print(f"Slower of the two pulls, no peers / peers: {ratio:.2f}.\n")
