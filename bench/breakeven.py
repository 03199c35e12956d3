"""Part `breakeven` (issue #20, target 2): the fastest upstream link at which a cold
pull through regcache stays within 1.1x of pulling directly.

For each rate of `--break-even-mbit`, the upstream is served across a link limited to
it (as part `wan`), and each of `--reps` runs pulls the >= 1 GiB image directly and
then cold through a fresh regcache, each after an unmeasured pull of its kind
(`Bench.settle`). Below the break-even rate the link is what limits both pulls; above
it, regcache's own cost per byte shows.
"""

from __future__ import annotations

from bench.peers import GHCR, REGCACHE_IP, WAN, Bench, Results
from bench.soakreport import table
from tests.e2e.netns import Netns

WITHIN = 1.1


def measure_break_even(bench: Bench, r: Results, reps: int, rates: list[int]) -> None:
    for mbit in rates:
        with Netns(REGCACHE_IP) as wan:
            bench.wan_upstream(wan, mbit)
            for _ in range(reps):
                bench.settle(f"{WAN}/bench/big:v1")
                r.add(f"breakeven {mbit} direct", bench.pull(f"{WAN}/bench/big:v1"))
                bench.settle(f"{GHCR}/bench/big:v1", bench.regcache)
                regcache = bench.regcache()
                r.add(f"breakeven {mbit} regcache", bench.pull(f"{GHCR}/bench/big:v1"))
                bench.ns.stop(regcache.proc)


def report_break_even(r: Results, rates: list[int], reps: int) -> list[list[str]]:
    """Prints the table; returns the target row."""
    print(f"### Break-even link speed: cold pull through regcache against direct, "
          f"wall s (median of {reps})\n")  # fmt: skip
    rows, within = [], []
    for mbit in rates:
        direct, cold = r[f"breakeven {mbit} direct"], r[f"breakeven {mbit} regcache"]
        rows.append([str(mbit), f"{direct:.2f}", f"{cold:.2f}", f"{cold / direct:.2f}"])
        if cold / direct <= WITHIN:
            within.append(mbit)
    table(["link Mbit/s", "direct", "regcache cold", "ratio"], rows)
    fastest = f"{max(within)} Mbit/s" if within else f"below {min(rates)} Mbit/s"
    return [[f"break-even link (cold within {WITHIN}x direct)", fastest, "", "≥ 2500 Mbit/s"]]
