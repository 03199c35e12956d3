"""The soak's figures (bench/soak.py runs it): answers by kind, latency over time,
regcache's memory, open files and CPU, failures, and hostile against quiet; Markdown
tables like the rest of bench/.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import os
import shutil
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.peers import Server

GiB = 1 << 30
VALID_HTTP = ("blob", "head", "head ttl", "manifest", "cold manifest", "cold blob")
WARM = ("blob", "head", "head ttl", "manifest")
TIMED = (*VALID_HTTP, "invalid", "dns udp", "dns tcp")
"""Kinds whose latency is reported (slow readers are slow on purpose; pushes go upstream)."""
SETTLE_S = 35.0
"""How long after the load the "after" sample is taken: past aiohttp's idle keep-alive
time for regcache's upstream connections (15 s, closed on a 15 s cleanup tick)."""
WARMUP_SHARE = 0.2
"""The first part of a run, left out of the growth trend (caches filling)."""


@dataclass
class Sample:
    t: float
    rss_mib: float
    fds: int
    threads: int
    cpu_s: float
    fd_kinds: Counter[str] = field(default_factory=Counter)
    machine: tuple[int, int] = (0, 0)
    """The whole machine's busy and total jiffies (/proc/stat)."""


@dataclass
class Phase:
    name: str
    seconds: float
    folder: Path
    lines: list[dict[str, Any]] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    before: Sample | None = None
    after: Sample | None = None
    loads: dict[str, Any] = field(default_factory=dict)
    sockets_before: Counter[str] = field(default_factory=Counter)
    sockets_after: Counter[str] = field(default_factory=Counter)
    upstream_cpu_s: float = 0.0
    problems: list[str] = field(default_factory=list)
    """What went wrong beyond failed answers (a load process that failed)."""

    def failures(self) -> list[dict[str, Any]]:
        return [line for line in self.lines if not line["ok"]]

    def inside(self) -> list[Sample]:
        """The samples taken while the valid load ran."""
        return [s for s in self.samples if 0 <= s.t <= self.seconds]

    def load_cpu_s(self) -> float:
        inside = self.inside()
        return inside[-1].cpu_s - inside[0].cpu_s if len(inside) > 1 else 0.0

    def machine_busy(self) -> float:
        """The share of the machine's CPU time busy meanwhile, whoever's."""
        inside = self.inside()
        if len(inside) < 2:
            return 0.0
        busy, total = (b - a for a, b in zip(inside[0].machine, inside[-1].machine, strict=True))
        return busy / max(total, 1)


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares growth per minute of (t seconds, value) points."""
    if len(points) < 3:
        return 0.0
    mt = statistics.fmean(t for t, _ in points)
    mv = statistics.fmean(v for _, v in points)
    den = sum((t - mt) ** 2 for t, _ in points)
    return 60 * sum((t - mt) * (v - mv) for t, v in points) / den if den else 0.0


def table(header: list[str], rows: list[list[str]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()


def steady(
    lines: list[dict[str, Any]], warmup_s: float, kinds: tuple[str, ...]
) -> list[dict[str, Any]]:
    """The passed answers of `kinds` after the warm-up (connections opened, caches
    filled): what latency figures are taken from."""
    return [x for x in lines if x["ok"] and x["k"] in kinds and x["t"] >= warmup_s]


def latencies(lines: list[dict[str, Any]], warmup_s: float, kinds: tuple[str, ...]) -> list[float]:
    return [x["ms"] for x in steady(lines, warmup_s, kinds)]


def p50_p99(values: list[float]) -> str:
    return f"{percentile(values, 50):.1f} / {percentile(values, 99):.1f}" if values else "-"


@dataclass
class SoakReport:
    args: argparse.Namespace
    folder: Path
    phases: list[Phase]
    kept: bool = False

    def keep(self, upstream: Server) -> None:
        """Keeps the folder, with the upstream's access log; big files gzipped."""
        if upstream.log.exists():
            shutil.copy(upstream.log, self.folder / "upstream-access.log")
        for path in self.folder.rglob("*"):
            if path.is_file() and path.stat().st_size > 8 << 20:
                with path.open("rb") as src, gzip.open(f"{path}.gz", "wb") as dest:
                    shutil.copyfileobj(src, dest)
                path.unlink()
        self.kept = True

    def print(self) -> None:
        """The tables on stdout, and into the kept folder's report.md."""
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            self._print()
        print(out.getvalue(), end="")
        if self.kept:
            (self.folder / "report.md").write_text(out.getvalue())

    def _print(self) -> None:
        a = self.args
        print(f"\n## Soak under load: {a.soak_clients} keep-alive HTTPS clients "
              f"({a.soak_slow} of them slow readers at {a.soak_slow_kib_s:g} KiB/s) offering "
              f"{a.soak_rate:g} steps/s, DNS at {a.soak_dns_qps:g} q/s, "
              f"{a.soak_seconds} s per phase\n")  # fmt: skip
        for phase in self.phases:
            print_phase(phase, a)
        if len(self.phases) == 2:
            print_comparison(self.phases[0], self.phases[1], a.soak_warmup_s)
        if self.kept:
            print(f"Logs and raw answers kept in {self.folder}\n")


def print_phase(phase: Phase, args: argparse.Namespace) -> None:
    print(f"### {phase.name}: answers by kind\n")
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in phase.lines:
        by_kind[line["k"]].append(line)
    rows = []
    warm = args.soak_warmup_s
    for kind, lines in sorted(by_kind.items(), key=lambda kv: -len(kv[1])):
        failed = sum(1 for x in lines if not x["ok"])
        ms = [x["ms"] for x in steady(lines, warm, (kind,))]
        cells = [f"{percentile(ms, p):.1f}" for p in (50, 99, 100)] if ms else ["-"] * 3
        mib = sum(x["b"] for x in lines) / (1 << 20)
        rows.append([kind, str(len(lines)), str(failed), *cells, f"{mib:.0f}"])
    table(["kind", "answers", "failed", f"p50 ms (after {warm:g} s)", "p99 ms", "max ms",
           "MiB"], rows)  # fmt: skip
    print_minutes(phase, args.soak_bucket_s)
    print_resources(phase)
    print_invalid(phase)
    print_slow(phase)
    print_failures(phase)
    if "hostile" in phase.loads:
        print(f"### {phase.name}: what the hostile connections achieved\n")
        rows = [[what, str(h["opened"]), str(h["refused"]), str(h["cut"]),
                 "-" if h["held_s_median"] is None else f"{h['held_s_median']:.1f}",
                 str(h["held_at_end"]), f"{h['open_mean']:.0f} ({h['open_min']}-{h['open_max']})"]
                for what, h in phase.loads["hostile"].items() if isinstance(h, dict)]  # fmt: skip
        table(["mix", "connected", "refused (< 1 s, no answer)", "cut later by regcache",
               "held s (median of cut)", "still open at the end",
               "open at once: mean (min-max)"], rows)  # fmt: skip
    for problem in phase.problems:
        print(f"**problem**: {problem}\n")


def print_minutes(phase: Phase, bucket_s: int) -> None:
    """p50 / p99 per time bucket and kind, with regcache's RSS and open files at its end."""
    print(f"### {phase.name}: p50 / p99 ms every {bucket_s} s\n")
    buckets: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for line in phase.lines:
        if line["ok"] and line["k"] in TIMED and 0 <= line["t"] < phase.seconds:
            buckets[int(line["t"] // bucket_s)][line["k"]].append(line["ms"])
    kinds = [k for k in TIMED if any(k in b for b in buckets.values())]
    rows = []
    for n in sorted(buckets):
        at = [s for s in phase.samples if s.t <= (n + 1) * bucket_s]
        res = [f"{at[-1].rss_mib:.0f}", str(at[-1].fds)] if at else ["-", "-"]
        cells = [p50_p99(buckets[n].get(k, [])) for k in kinds]
        rows.append([f"{n * bucket_s}-{(n + 1) * bucket_s}", *cells, *res])
    table(["s", *kinds, "RSS MiB", "fds"], rows)


def print_resources(phase: Phase) -> None:
    inside = phase.inside()
    if not inside or phase.before is None or phase.after is None:
        return
    trend = [s for s in inside if s.t >= WARMUP_SHARE * phase.seconds] or inside
    served = sum(x["b"] for x in phase.lines if x["k"] not in ("dns udp", "dns tcp"))
    cpu = phase.load_cpu_s()
    print(f"### {phase.name}: regcache over time (sampled every "
          f"{phase.seconds / max(1, len(inside) - 1):.0f} s; trend after the first "
          f"{WARMUP_SHARE:.0%})\n")  # fmt: skip
    rows = []
    for what, get, unit in (("RSS MiB", lambda s: s.rss_mib, "MiB"),
                            ("open fds", lambda s: float(s.fds), "fds"),
                            ("threads", lambda s: float(s.threads), "threads")):  # fmt: skip
        values = [get(s) for s in inside]
        growth = slope_per_min([(s.t, get(s)) for s in trend])
        rows.append([what, f"{get(phase.before):.0f}", f"{get(trend[0]):.0f}", f"{values[-1]:.0f}",
                     f"{max(values):.0f}", f"{growth:+.2f} {unit}/min",
                     f"{get(phase.after):.0f}"])  # fmt: skip
    table(
        [
            "",
            "before load",
            f"at {trend[0].t:.0f} s",
            "last",
            "max",
            "trend",
            f"{SETTLE_S:.0f} s after load",
        ],
        rows,
    )
    if phase.after.fd_kinds != phase.before.fd_kinds:
        left = phase.after.fd_kinds - phase.before.fd_kinds
        gone = phase.before.fd_kinds - phase.after.fd_kinds
        print(f"Open fds after load, against before: more {dict(left)}, fewer {dict(gone)}.\n")
    for when, sockets in (("before load", phase.sockets_before),
                          (f"{SETTLE_S:.0f} s after load", phase.sockets_after)):  # fmt: skip
        found = ", ".join(f"{k} x{n}" for k, n in sorted(sockets.items()))
        print(f"regcache's TCP sockets {when}: {found}.\n")
    valid = [x for x in phase.lines if x["ok"] and x["k"] in VALID_HTTP]
    cores = os.cpu_count() or 1
    load_cpu = sum(float(v.get("cpu_s", 0)) for k, v in phase.loads.items() if k != "prepare")
    print(f"Server CPU: {cpu:.1f} s over {phase.seconds:.0f} s ({cpu / phase.seconds:.2f} "
          f"cores), {served / GiB:.2f} GiB served: **{cpu / max(served / GiB, 1e-9):.1f} CPU "
          f"s/GiB**; {len(valid) / phase.seconds:.0f} valid requests/s answered. The load "
          f"processes used {load_cpu:.0f} CPU s, the upstream {phase.upstream_cpu_s:.0f} s; "
          f"the machine was {phase.machine_busy():.0%} "
          f"busy ({cores} cores, other work on it included).\n")  # fmt: skip


def print_invalid(phase: Phase) -> None:
    cases: dict[str, Counter[int]] = defaultdict(Counter)
    for line in phase.lines:
        if line["k"] == "invalid":
            cases[line["case"]][line["s"]] += 1
    if cases:
        print(f"### {phase.name}: invalid requests (must be answered 4xx)\n")
        rows = [[case, ", ".join(f"{s}: {n}" for s, n in sorted(c.items())),
                 str(sum(n for s, n in c.items() if not 400 <= s < 500))]
                for case, c in sorted(cases.items())]  # fmt: skip
        table(["case", "answers (status: count)", "not 4xx"], rows)


def print_slow(phase: Phase) -> None:
    slow = [x for x in phase.lines if x["k"] == "slow"]
    if not slow:
        return
    done = [x for x in slow if x["ok"] and x.get("complete")]
    rates = [x["b"] / 1024 / (x["ms"] / 1000) for x in slow if x["ok"] and x["ms"] > 0]
    print(f"Slow readers: {len(done)} reads complete, "
          f"{sum(1 for x in slow if x['ok'] and not x.get('complete'))} still reading at the "
          f"end, {len(slow) - sum(1 for x in slow if x['ok'])} failed; median "
          f"{statistics.median(rates) if rates else 0:.1f} KiB/s.\n")  # fmt: skip


def print_failures(phase: Phase, limit: int = 20) -> None:
    """Failed answers grouped by kind, status and reason, with the first of each group
    whole (what was asked, what came back); every one is in the raw answers."""
    failures = phase.failures()
    if not failures:
        print(f"No failed answers in {phase.name}.\n")
        return
    groups: dict[tuple[str, int, str], list[dict[str, Any]]] = defaultdict(list)
    for x in failures:
        reason = str(x.get("problem") or x.get("error") or "?").split("(", 1)[0][:60]
        groups[(x["k"], x["s"], reason)].append(x)
    print(f"### {phase.name}: {len(failures)} failed answers, by kind and reason\n")
    keys = ("url", "name", "case", "problem", "error", "body")
    rows = []
    for (kind, status, reason), group in sorted(groups.items(), key=lambda g: -len(g[1]))[:limit]:
        first = group[0]
        what = "; ".join(f"{k}={str(first[k])[:200]!r}" for k in keys if k in first)
        when = f"{first['t']:.1f}-{group[-1]['t']:.1f}"
        rows.append([kind, str(status), reason, str(len(group)), when, what.replace("|", "\\|")])
    table(["kind", "status", "reason", "count", "t s (first-last)", "the first"], rows)


def print_comparison(quiet: Phase, hostile: Phase, warmup_s: float) -> None:
    print(f"### Valid clients' p99 after the first {warmup_s:g} s, hostile against quiet "
          "(target ≤ 2x)\n")  # fmt: skip
    rows = []
    groups = [(k, (k,)) for k in (*VALID_HTTP, "dns udp", "dns tcp")]
    for label, kinds in [("warm valid HTTP (" + ", ".join(WARM) + ")", WARM), *groups]:
        q, h = latencies(quiet.lines, warmup_s, kinds), latencies(hostile.lines, warmup_s, kinds)
        if not q or not h:
            continue
        ratio = percentile(h, 99) / percentile(q, 99)
        failed = [sum(1 for x in p.lines if x["k"] in kinds and not x["ok"])
                  for p in (quiet, hostile)]  # fmt: skip
        rows.append([label, f"{percentile(q, 99):.1f}", f"{percentile(h, 99):.1f}",
                     f"{ratio:.2f}", "yes" if ratio <= 2 else "**no**",
                     f"{failed[0]} / {failed[1]}"])  # fmt: skip
    qc, hc = quiet.load_cpu_s(), hostile.load_cpu_s()
    rows.append(["regcache CPU s", f"{qc:.1f}", f"{hc:.1f}", f"{hc / max(qc, 1e-9):.2f}", "", ""])
    rows.append(["machine busy (all processes)", f"{quiet.machine_busy():.0%}",
                 f"{hostile.machine_busy():.0%}", "", "", ""])  # fmt: skip
    table(["", "quiet p99 ms", "hostile p99 ms", "ratio", "≤ 2x", "failed quiet / hostile"],
          rows)  # fmt: skip
