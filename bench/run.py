"""regcache side by side with distribution's pull-through proxy and a direct pull.

Everything runs in a network namespace this script creates: an upstream (Debian's
docker-registry over TLS), distribution in proxy mode in front of it, and regcache
reached through its own DNS, as on a build host. skopeo is the client. Prints a Markdown
table of medians and the ratios the targets are stated in. See bench/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.e2e.netns import Netns  # noqa: E402
from tests.e2e.pki import TestCa  # noqa: E402
from tests.harness import example_registries  # noqa: E402

MiB = 1 << 20
REGCACHE_IP, UPSTREAM_IP, PROXY_IP = "127.0.0.2", "127.0.0.3", "127.0.0.4"
UPSTREAM, PROXY = "upstream.bench", "proxy.bench"
HUB = "registry-1.docker.io"  # the name clients use through regcache


class RandomReader:
    """`size` random bytes for tarfile to copy: incompressible, never all in memory."""

    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return os.urandom(n)


class HashingWriter:
    def __init__(self, f: io.BufferedWriter) -> None:
        self.f = f
        self.hash = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        return self.f.write(data)


def write_layer(blobs: Path, size: int) -> dict[str, object]:
    """A tar of `size` random bytes, streamed to disk while it is hashed."""
    tmp = blobs / "layer.tmp"
    with tmp.open("wb") as f:
        out = HashingWriter(f)
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
            info = tarfile.TarInfo("payload")
            info.size = size
            tar.addfile(info, RandomReader(size))
    hex_ = out.hash.hexdigest()
    tmp.rename(blobs / hex_)
    return {
        "mediaType": "application/vnd.oci.image.layer.v1.tar",
        "digest": f"sha256:{hex_}",
        "size": (blobs / hex_).stat().st_size,
    }


def write_image(folder: Path, layer_sizes: list[int]) -> int:
    """An OCI layout (tag `v1`) with random layers; returns its total size in bytes."""
    blobs = folder / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    layers = [write_layer(blobs, size) for size in layer_sizes]

    def put(data: bytes, media_type: str) -> dict[str, object]:
        hex_ = hashlib.sha256(data).hexdigest()
        (blobs / hex_).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{hex_}", "size": len(data)}

    config = put(json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {
        "type": "layers", "diff_ids": [d["digest"] for d in layers]}}).encode(),
        "application/vnd.oci.image.config.v1+json")  # fmt: skip
    manifest_type = "application/vnd.oci.image.manifest.v1+json"
    manifest = put(
        json.dumps({"schemaVersion": 2, "mediaType": manifest_type, "config": config,
                    "layers": layers}).encode(),
        manifest_type,
    )  # fmt: skip
    manifest["annotations"] = {"org.opencontainers.image.ref.name": "v1"}
    (folder / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (folder / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [manifest]}))
    return sum(int(d["size"]) for d in layers) + int(config["size"])


@dataclass
class Server:
    proc: subprocess.Popen[bytes]

    def _pid(self) -> int:
        # `ip netns exec` execs the command: the pid is the server's own.
        return self.proc.pid

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self._pid()}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def peak_rss_mib(self) -> float:
        for line in Path(f"/proc/{self._pid()}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def reset_peak(self) -> None:
        Path(f"/proc/{self._pid()}/clear_refs").write_text("5")


class Bench:
    def __init__(self, ns: Netns, tmp: Path, ca: TestCa) -> None:
        self.ns, self.tmp, self.ca = ns, tmp, ca
        self.certs = tmp / "client-certs"  # trusted by skopeo: the test CA and regcache's
        self.certs.mkdir()
        shutil.copy(ca.pem, self.certs / "upstream-ca.crt")

    def wait_port(self, ip: str, proc: subprocess.Popen[bytes], log: Path) -> None:
        for _ in range(200):
            if proc.poll() is not None:
                raise RuntimeError(log.read_text())
            if self.ns.run("bash", "-c", f"exec 3<>/dev/tcp/{ip}/443", check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"{ip}:443 did not open")

    def registry(self, name: str, ip: str, host: str, extra: dict[str, object]) -> Server:
        folder = self.tmp / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        cert, key = self.ca.issue(name, host, HUB if name == "upstream" else host)
        config = {"version": 0.1, "log": {"level": "error", "accesslog": {"disabled": True}},
                  "storage": {"filesystem": {"rootdirectory": str(folder / "data")}},
                  "http": {"addr": f"{ip}:443", "tls": {"certificate": str(cert), "key": str(key)}},
                  **extra}  # fmt: skip
        (folder / "config.yml").write_text(yaml.safe_dump(config))
        log = folder / "log"
        # Go reads SSL_CERT_FILE: the proxy must trust the upstream's test CA.
        proc = self.ns.start("env", f"SSL_CERT_FILE={self.ca.pem}", "docker-registry", "serve",
                             str(folder / "config.yml"), log=log)  # fmt: skip
        self.wait_port(ip, proc, log)
        return Server(proc)

    def regcache(self) -> Server:
        state = self.tmp / "regcache-state"
        shutil.rmtree(state, ignore_errors=True)
        config = {
            "state_dir": str(state), "log_level": "WARNING",
            "listen": {"dns": [f"{REGCACHE_IP}:53"], "https": [f"{REGCACHE_IP}:443"]},
            "appliance": {"ipv4": REGCACHE_IP}, "dns": {"upstreams": ["127.0.0.1:9"]},
            "upstream": {"ca_bundle": str(self.ca.pem)}, "resolve": {HUB: [UPSTREAM_IP]},
            "tls": yaml.safe_load((REPO / "config.example.yaml").read_text())["tls"],
            "registries": example_registries(),
        }  # fmt: skip
        path = self.tmp / "regcache.yaml"
        path.write_text(yaml.safe_dump(config))
        log = self.tmp / "regcache.log"
        proc = self.ns.start(
            str(REPO / ".venv/bin/regcache"), "serve", "--config", str(path), log=log
        )
        self.wait_port(REGCACHE_IP, proc, log)
        export = [str(REPO / ".venv/bin/regcache"), "ca", "export", "--config", str(path),
                  "--out", str(self.certs / "regcache-ca.crt")]  # fmt: skip
        subprocess.run(export, check=True, capture_output=True)
        return Server(proc)

    def copy(self, src: str, dest: str) -> float:
        started = time.monotonic()
        out = self.ns.run("skopeo", "--insecure-policy", "copy", "--preserve-digests",
                          "--src-cert-dir", str(self.certs), "--dest-cert-dir", str(self.certs),
                          src, dest, check=False, timeout=1800)  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
        return time.monotonic() - started

    def pull(self, ref: str) -> float:
        dest = self.tmp / "pulled"
        shutil.rmtree(dest, ignore_errors=True)
        try:
            return self.copy(f"docker://{ref}", f"oci:{dest}:x")
        finally:
            shutil.rmtree(dest, ignore_errors=True)

    def concurrent_pulls(self, ref: str, n: int) -> float:
        started = time.monotonic()
        procs = [
            subprocess.Popen(self.ns.argv(
                "skopeo", "--insecure-policy", "copy", "--preserve-digests", "--src-cert-dir",
                str(self.certs), f"docker://{ref}", f"oci:{self.tmp / f'crowd-{i}'}:x"),
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for i in range(n)
        ]  # fmt: skip
        for proc in procs:
            _, err = proc.communicate(timeout=1800)
            if proc.returncode != 0:
                raise RuntimeError(err)
        for i in range(n):
            shutil.rmtree(self.tmp / f"crowd-{i}", ignore_errors=True)
        return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--layers-mib", default="512,256,256,1", help="the >= 1 GiB image")
    parser.add_argument("--rss-layers-mib", default="100,1024", help="layer sizes for the RSS runs")
    parser.add_argument(
        "--work", type=Path, default=None, help="scratch folder (default: /var/tmp)"
    )
    args = parser.parse_args()
    # /var/tmp: on disk (not tmpfs), as a gateway's store would be.
    work = args.work or Path("/var/tmp")  # noqa: S108 - a private mkdtemp below it
    tmp = Path(tempfile.mkdtemp(prefix="regcache-bench-", dir=work))
    try:
        run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(args: argparse.Namespace, tmp: Path) -> None:
    ca = TestCa(tmp)
    with Netns(REGCACHE_IP) as ns:
        (ns.etc / "hosts").write_text(
            f"127.0.0.1 localhost\n{UPSTREAM_IP} {UPSTREAM}\n{PROXY_IP} {PROXY}\n"
        )
        bench = Bench(ns, tmp, ca)
        bench.registry("upstream", UPSTREAM_IP, UPSTREAM, {})
        sizes = {"big": [int(x) * MiB for x in args.layers_mib.split(",")]}
        for mib in args.rss_layers_mib.split(","):
            sizes[f"layer{mib}"] = [int(mib) * MiB]
        image_bytes = {}
        for name, layer_sizes in sizes.items():
            layout = tmp / f"image-{name}"
            image_bytes[name] = write_image(layout, layer_sizes)
            bench.copy(f"oci:{layout}:v1", f"docker://{UPSTREAM}/bench/{name}:v1")
            shutil.rmtree(layout)
        proxy_extra = {"proxy": {"remoteurl": f"https://{UPSTREAM}"}}
        results: dict[str, list[float]] = {}

        def record(key: str, value: float) -> None:
            results.setdefault(key, []).append(value)

        for _ in range(args.reps):
            record("direct", bench.pull(f"{UPSTREAM}/bench/big:v1"))

            def proxy() -> Server:
                return bench.registry("proxy", PROXY_IP, PROXY, proxy_extra)

            peers = (("regcache", bench.regcache, HUB), ("distribution", proxy, PROXY))
            for name, start, host in peers:
                server = start()  # fresh, empty cache: the first pull is cold
                for phase in ("cold", "warm"):
                    cpu = server.cpu_s()
                    record(f"{name} {phase}", bench.pull(f"{host}/bench/big:v1"))
                    record(f"{name} {phase} cpu", server.cpu_s() - cpu)
                ns.stop(server.proc)
        for mib in args.rss_layers_mib.split(","):
            regcache = bench.regcache()
            baseline = regcache.peak_rss_mib()
            record(
                f"8 cold pulls {mib} MiB layer: wall",
                bench.concurrent_pulls(f"{HUB}/bench/layer{mib}:v1", 8),
            )
            record(f"8 cold pulls {mib} MiB layer: regcache peak RSS MiB", regcache.peak_rss_mib())
            record(f"8 cold pulls {mib} MiB layer: regcache idle RSS MiB", baseline)
            ns.stop(regcache.proc)
        report(results, image_bytes["big"], args.reps)


def report(results: dict[str, list[float]], image_bytes: int, reps: int) -> None:
    med = {k: statistics.median(v) for k, v in results.items()}
    gib = image_bytes / (1 << 30)
    print(f"\nImage: {image_bytes / MiB:.0f} MiB; medians of {reps} runs;", end=" ")
    print("skopeo client; loopback TLS.\n")
    print("| measure | seconds |\n|---|---|")
    for key in (
        "direct",
        "regcache cold",
        "regcache warm",
        "distribution cold",
        "distribution warm",
    ):
        print(f"| {key} pull | {med[key]:.2f} |")
    print("\n| server CPU s per GiB served | regcache | distribution proxy |\n|---|---|---|")
    for phase in ("cold", "warm"):
        ours, peer = med[f"regcache {phase} cpu"] / gib, med[f"distribution {phase} cpu"] / gib
        print(f"| {phase} | {ours:.2f} | {peer:.2f} |")
    print("\n| ratio | value | target |\n|---|---|---|")
    warm = med["regcache warm"] / med["distribution warm"]
    print(f"| regcache warm / distribution warm | {warm:.2f} | ≤ 1.0 |")
    print(f"| regcache cold / direct | {med['regcache cold'] / med['direct']:.2f} | ≤ 1.15 |")
    print(
        f"| distribution cold / direct | {med['distribution cold'] / med['direct']:.2f} | (peer) |"
    )
    print("\n| concurrent pulls | value |\n|---|---|")
    for key, value in med.items():
        if key.startswith("8 cold"):
            print(f"| {key} | {value:.1f} |")


if __name__ == "__main__":
    main()
