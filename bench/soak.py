"""The soak under load (issue #15): a bounded run of a few hundred keep-alive HTTPS
clients and steady DNS queries against one regcache, then (--soak-hostile) the same with
hostile connections alongside. Run by `bench/run.py --only soak`; see bench/README.md.

The load runs in separate processes inside the namespace (soakload.py: HTTP clients;
soaknet.py: DNS and the hostile mixes); this module starts them, samples regcache's RSS,
open files, threads and CPU meanwhile, and reads their answers back into tables.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench.peers import REPO, RESOLVER_IP, Bench, Server
from bench.soakreport import SETTLE_S, Phase, Sample, SoakReport

# The valid clients' sources (127.0.1.x) and the host's own (127.0.0.1: the resolver
# lookups of the load's sockets) are allowed; the hostile sources (127.0.9.x) are not.
ALLOWED = ["127.0.0.0/24", "127.0.1.0/24"]
HOSTILE_LEAD_S = 10.0
"""The hostile mix starts this long before the valid load (its connections opened)."""


def fd_kind(target: str) -> str:
    """socket, pipe, anon_inode:[eventfd]... or, for a file, its name's first letters
    (a blob, the index, the audit log) without the digits and hex that differ."""
    if target.startswith("/"):
        name = Path(target).name
        return "file " + (name if "." in name and len(name) < 24 else name[:2] + "…")
    return target.split(":[")[0] if target[:1] != "a" else target


def sample(server: Server, start_at: float) -> Sample:
    pid = server.proc.pid
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    kinds: Counter[str] = Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            kinds[fd_kind(os.readlink(f"/proc/{pid}/fd/{fd}"))] += 1
        except OSError:
            continue  # closed meanwhile
    jiffies = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = jiffies[3] + jiffies[4]
    return Sample(time.time() - start_at, int(status["VmRSS"].split()[0]) / 1024,
                  sum(kinds.values()), int(status["Threads"]), server.cpu_s(), kinds,
                  (sum(jiffies) - idle, sum(jiffies)))  # fmt: skip


def tcp_sockets(bench: Bench, pid: int) -> Counter[str]:
    """regcache's TCP sockets by state and the far end's role: listeners, connections
    to the upstream (keep-alive pool), clients' connections; from `ss` in the namespace."""
    out = bench.ns.run("ss", "-tanpH", check=False).stdout
    found: Counter[str] = Counter()
    for line in out.splitlines():
        if f"pid={pid}," not in line:
            continue
        state, _, _, local, peer = line.split()[:5]
        if state == "LISTEN":
            found[f"listening on {local}"] += 1
        elif local.rsplit(":", 1)[1] in ("443", "53"):
            found[f"{state} from a client to {local}"] += 1
        else:
            found[f"{state} to {peer}"] += 1
    return found


def overrides(args: argparse.Namespace) -> dict[str, object]:
    """regcache's config for the soak: INFO logging (kept when the run fails), DNS
    allowing the valid clients' sources but not the hostile ones, and a TCP slot limit
    the hostile mix can exceed."""
    return {
        "log_level": "INFO",
        "dns": {"upstreams": [f"{RESOLVER_IP}:53"], "rate_limit_qps": 0,
                "allow_clients": ALLOWED, "tcp_max_connections": args.soak_dns_tcp_max},
    }  # fmt: skip


def python(bench: Bench, script: str, *args: str) -> list[str]:
    argv = [str(REPO / ".venv/bin/python"), str(REPO / "bench" / script), *args]
    if script == "soakload.py":
        argv += [arg for ca in bench.cas() for arg in ("--ca", ca)]
    return bench.ns.argv(*argv)


def start_loads(
    bench: Bench, args: argparse.Namespace, phase: Phase, plan: Path, start_at: float,
    hostile: bool,
) -> dict[str, subprocess.Popen[bytes]]:  # fmt: skip
    """The load processes, each told to start at `start_at` and run `phase.seconds`."""
    timing = ["--start-at", f"{start_at:.3f}", "--seconds", str(phase.seconds)]
    argvs: dict[str, list[str]] = {}
    procs, clients, first = args.soak_procs, args.soak_clients, 0
    for i in range(procs):
        share = clients // procs + (1 if i < clients % procs else 0)
        slow = args.soak_slow // procs + (1 if i < args.soak_slow % procs else 0)
        argvs[f"http-{i}"] = python(
            bench, "soakload.py", "http", "--plan", str(plan),
            "--out", str(phase.folder / f"http-{i}.jsonl"), "--clients", str(share),
            "--first-client", str(first), "--sources", str(args.soak_sources),
            "--slow", str(slow), "--slow-kib-s", str(args.soak_slow_kib_s),
            "--rate", str(args.soak_rate / procs), "--seed", str(1000 * (i + 1)), *timing,
            *(["--mix", args.soak_mix] if args.soak_mix else []),
        )  # fmt: skip
        first += share
    argvs["dns"] = python(bench, "soaknet.py", "dns", "--out", str(phase.folder / "dns.jsonl"),
                          "--qps", str(args.soak_dns_qps), "--tcp-qps", "5", *timing)  # fmt: skip
    if hostile:
        holds = args.soak_dns_tcp_max + 64 if args.soak_dns_holds is None else args.soak_dns_holds
        # Under way (and spread out) before the valid load starts, until it ends.
        early = ["--start-at", f"{start_at - HOSTILE_LEAD_S:.3f}",
                 "--seconds", str(phase.seconds + HOSTILE_LEAD_S)]  # fmt: skip
        hostile_args = ["--hellos", str(args.soak_hellos), "--dns-holds", str(holds)]
        argvs["hostile"] = python(bench, "soaknet.py", "hostile", *hostile_args, *early)
    running = {}
    for name, argv in argvs.items():
        with (phase.folder / f"{name}.out").open("wb") as out, \
                (phase.folder / f"{name}.err").open("wb") as err:  # fmt: skip
            running[name] = subprocess.Popen(argv, stdout=out, stderr=err)
    return running


def watch(
    regcache: Server, phase: Phase, procs: dict[str, subprocess.Popen[bytes]],
    start_at: float, every_s: float,
) -> None:  # fmt: skip
    """Samples regcache every `every_s` until the load processes end (bounded: the run's
    length plus three minutes); a load process that fails is a problem of the phase."""
    deadline = start_at + phase.seconds + 180
    while any(p.poll() is None for p in procs.values()) and time.time() < deadline:
        if regcache.proc.poll() is not None:
            phase.problems.append(f"regcache exited with {regcache.proc.returncode}")
            break
        phase.samples.append(sample(regcache, start_at))
        time.sleep(max(0.1, every_s - (time.time() - start_at) % every_s))
    for name, proc in procs.items():
        if proc.poll() is None:
            proc.kill()
            phase.problems.append(f"{name}: still running at the deadline, killed")
        proc.wait()
        out = (phase.folder / f"{name}.out").read_text()
        if proc.returncode != 0 or not out:
            err = (phase.folder / f"{name}.err").read_text()[-2000:]
            phase.problems.append(f"{name}: exit {proc.returncode}: {err}")
        else:
            phase.loads[name] = json.loads(out)


def write_samples(phase: Phase) -> None:
    """regcache's samples as CSV beside the raw answers (kept with them)."""
    rows = ["t_s,rss_mib,fds,threads,cpu_s,fd_kinds"]
    for s in [phase.before, *phase.samples, phase.after]:
        if s is not None:
            kinds = " ".join(f"{k}={n}" for k, n in sorted(s.fd_kinds.items()))
            rows.append(f"{s.t:.1f},{s.rss_mib:.1f},{s.fds},{s.threads},{s.cpu_s:.2f},{kinds}")
    (phase.folder / "regcache-samples.csv").write_text("\n".join(rows) + "\n")


def run_phase(
    bench: Bench, upstream: Server, args: argparse.Namespace, out: Path, name: str, hostile: bool
) -> Phase:
    phase = Phase(name, float(args.soak_seconds), out / name)
    phase.folder.mkdir()
    regcache = bench.regcache(**overrides(args))
    try:
        prepare = python(bench, "soakload.py", "prepare", "--plan", str(out / "plan.json"),
                         "--out", str(phase.folder / "prepull.jsonl"),
                         "--images", str(args.soak_images))  # fmt: skip
        done = subprocess.run(prepare, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"soak prepare failed: {done.stdout} {done.stderr}")
        phase.loads["prepare"] = json.loads(done.stdout)
        # Python, aiohttp and 300 sessions take a moment; the hostile mix starts earlier.
        start_at = time.time() + 5 + (HOSTILE_LEAD_S if hostile else 0)
        phase.before = sample(regcache, start_at)
        phase.sockets_before = tcp_sockets(bench, regcache.proc.pid)
        procs = start_loads(bench, args, phase, out / "plan.json", start_at, hostile)
        upstream_cpu = upstream.cpu_s()
        watch(regcache, phase, procs, start_at, args.soak_sample_s)
        phase.upstream_cpu_s = upstream.cpu_s() - upstream_cpu
        # Clients gone, fills done, upstream keep-alive connections expired (aiohttp's
        # 15 s): what is still open now was kept.
        time.sleep(SETTLE_S)
        phase.after = sample(regcache, start_at)
        phase.sockets_after = tcp_sockets(bench, regcache.proc.pid)
    finally:
        bench.ns.stop(regcache.proc)
        write_samples(phase)
        for log in (regcache.log, bench.state / "audit.jsonl", bench.tmp / "regcache.yaml"):
            if log.exists():
                shutil.copy(log, phase.folder / log.name)
        regcache.log.unlink(missing_ok=True)  # the next phase's regcache logs afresh
    for path in sorted(phase.folder.glob("*.jsonl")):
        if path.name not in ("prepull.jsonl", "audit.jsonl"):
            phase.lines += [json.loads(line) for line in path.read_text().splitlines()]
    return phase


def measure_soak(bench: Bench, upstream: Server, args: argparse.Namespace) -> SoakReport:
    """The quiet phase, then (--soak-hostile) the hostile one, each on a fresh regcache
    with the warm images pulled into it first. The phases' logs and raw answers are
    kept under --work when anything failed or with --keep; otherwise removed."""
    work = args.work or Path("/var/tmp")  # noqa: S108 - a private folder below it
    out = Path(tempfile.mkdtemp(prefix=time.strftime("regcache-soak-%Y%m%d-%H%M%S-"), dir=work))
    resolver = bench.dnsmasq(RESOLVER_IP, "--address=/example.test/192.0.2.99")
    report = SoakReport(args, out, [])
    try:
        report.phases.append(run_phase(bench, upstream, args, out, "quiet", hostile=False))
        if args.soak_hostile:
            report.phases.append(run_phase(bench, upstream, args, out, "hostile", hostile=True))
    except BaseException:
        report.keep(upstream)
        print(f"soak failed; its logs and raw answers are kept in {out}")
        raise
    finally:
        bench.ns.stop(resolver.proc)
    if args.keep or any(p.failures() or p.problems for p in report.phases):
        report.keep(upstream)
    else:
        shutil.rmtree(out, ignore_errors=True)
    return report
