"""The servers the benchmark starts in its network namespace, and the clients it runs there.

Addresses (all on the namespace's loopback):
  127.0.0.2  regcache (DNS :53, HTTPS :443) — clients reach it as a build host would
  127.0.0.3  the upstream: Debian's docker-registry (distribution 2.8) over TLS
  127.0.0.4  distribution in pull-through proxy mode, in front of the upstream
  127.0.0.5  nginx serving regcache's blob files over TLS (the ceiling for a cached file)
  127.0.0.6  dnsmasq, the DNS reference: answers registry names itself, forwards the rest
  127.0.0.7  dnsmasq, the "real resolver" both forward to
  127.0.0.12 nginx as a pull-through cache (proxy_cache) in front of the upstream
  10.203.0.2 in a second namespace behind a veth pair whose egress is rate-limited
             (tbf): the same upstream registry, as across a WAN link
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.e2e.netns import Netns
from tests.e2e.pki import TestCa
from tests.harness import example_registries

REPO = Path(__file__).resolve().parent.parent
REGCACHE_IP, UPSTREAM_IP, PROXY_IP, NGINX_IP = "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"
DNSMASQ_IP, RESOLVER_IP = "127.0.0.6", "127.0.0.7"
NGINX_CACHE_IP, NGINX_CACHE = "127.0.0.12", "nginx-cache.bench"
UPSTREAM, PROXY, NGINX = "upstream.bench", "proxy.bench", "nginx.bench"
HUB = "registry-1.docker.io"  # through regcache, tags revalidated on every request
QUAY = "quay.io"  # through regcache too, with a tag TTL: tags answered from the store
FORWARDED = "build.example.test"  # not a registry: regcache forwards it
WAN, WAN_IP, WAN_LOCAL_IP = "wan.bench", "10.203.0.2", "10.203.0.1"
GHCR = "ghcr.io"  # through regcache to the upstream across the WAN link
_ACCESS = re.compile(r'"GET (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3}) (?P<bytes>\d+)')


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _tree(pid: int) -> list[int]:
    """`pid` and its children (nginx's workers)."""
    pids = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat(int(entry.name))[1]) == pid:
                    pids.append(int(entry.name))
            except (OSError, IndexError):
                continue
    return pids


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    log: Path

    def cpu_s(self) -> float:
        """User + system CPU seconds of the server and its worker processes, including
        workers that exited (cutime/cstime)."""
        return self.cpu_and_user_s()[0]

    def cpu_and_user_s(self) -> tuple[float, float]:
        """`cpu_s` and, read with it, its part spent in user space. The kernel's part
        includes the copies into the page cache, whose cost on a VM depends on whether
        the host still backs the guest's free memory (bench/README.md)."""
        user = system = 0
        for pid in _tree(self.proc.pid):
            f = _stat(pid)
            user += int(f[11]) + int(f[13])
            system += int(f[12]) + int(f[14])
        tick = os.sysconf("SC_CLK_TCK")
        return (user + system) / tick, user / tick

    def peak_rss_mib(self) -> float:
        """The most resident memory since `reset_peak` (VmHWM), with the workers'."""
        return self._status_mib("VmHWM:")

    def rss_mib(self) -> float:
        """Resident memory now (VmRSS), of the server and its workers."""
        return self._status_mib("VmRSS:")

    def _status_mib(self, field: str) -> float:
        total = 0
        for pid in _tree(self.proc.pid):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(field):
                    total += int(line.split()[1])
        return total / 1024

    def reset_peak(self) -> None:
        for pid in _tree(self.proc.pid):
            Path(f"/proc/{pid}/clear_refs").write_text("5")

    def sent_bytes(self) -> int:
        """Body bytes of every 200 GET in the access log (the upstream's)."""
        return sum(
            int(m.group("bytes"))
            for m in _ACCESS.finditer(self.log.read_text(errors="replace"))
            if m.group("status") == "200" and "/v2/" in m.group("path")
        )


class Results:
    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}

    def add(self, key: str, value: float) -> None:
        self.samples.setdefault(key, []).append(value)

    def __getitem__(self, key: str) -> float:
        return statistics.median(self.samples[key])

    def __contains__(self, key: str) -> bool:
        return key in self.samples


class Bench:
    def __init__(self, ns: Netns, tmp: Path, ca: TestCa, profiles: Path | None = None) -> None:
        self.ns, self.tmp, self.ca = ns, tmp, ca
        self.profiles = profiles
        self.certs = tmp / "client-certs"  # trusted by skopeo: the test CA and regcache's
        self.certs.mkdir()
        shutil.copy(ca.pem, self.certs / "upstream-ca.crt")
        self.state = tmp / "regcache-state"

    def cas(self) -> list[str]:
        return [str(p) for p in sorted(self.certs.glob("*.crt"))]

    def wait_port(self, ip: str, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
        for _ in range(300):
            if proc.poll() is not None:
                raise RuntimeError(log.read_text())
            probe = f"exec 3<>/dev/tcp/{ip}/{port}"
            if self.ns.run("bash", "-c", probe, check=False).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError(f"{ip}:{port} did not open")

    def registry(self, name: str, ip: str, extra: Mapping[str, object], *hosts: str) -> Server:
        folder = self.tmp / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        cert, key = self.ca.issue(name, *hosts)
        config = {"version": 0.1, "log": {"level": "error", "formatter": "text",
                                          "accesslog": {"disabled": name != "upstream"}},
                  "storage": {"filesystem": {"rootdirectory": str(folder / "data")}},
                  "http": {"addr": f"{ip}:443", "tls": {"certificate": str(cert), "key": str(key)}},
                  **extra}  # fmt: skip
        (folder / "config.yml").write_text(yaml.safe_dump(config))
        log = folder / "log"
        # Go reads SSL_CERT_FILE: the proxy must trust the upstream's test CA.
        proc = self.ns.start("env", f"SSL_CERT_FILE={self.ca.pem}", "docker-registry", "serve",
                             str(folder / "config.yml"), log=log)  # fmt: skip
        self.wait_port(ip, 443, proc, log)
        return Server(proc, log)

    def upstream(self) -> Server:
        return self.registry("upstream", UPSTREAM_IP, {}, UPSTREAM, HUB, QUAY)

    def wan_upstream(self, wan: Netns, mbit: int) -> Server:
        """The upstream's storage served again from namespace `wan`, reached over a veth
        pair whose egress from `wan` is limited to `mbit` Mbit/s."""
        veth = f"rcw{wan.name[-6:]}"
        subprocess.run(["ip", "-n", self.ns.name, "link", "add", veth, "type", "veth", "peer",
                        "name", "wan0", "netns", wan.name], check=True)  # fmt: skip
        for ns, dev, ip in ((self.ns.name, veth, WAN_LOCAL_IP), (wan.name, "wan0", WAN_IP)):
            subprocess.run(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev], check=True)
            subprocess.run(["ip", "-n", ns, "link", "set", dev, "up"], check=True)
        tbf = ["tc", "qdisc", "add", "dev", "wan0", "root", "tbf", "rate", f"{mbit}mbit",
               "burst", "1mb", "latency", "100ms"]  # fmt: skip
        subprocess.run(["ip", "netns", "exec", wan.name, *tbf], check=True)
        folder = self.tmp / "wan"
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        cert, key = self.ca.issue("wan", WAN, GHCR)
        data = str(self.tmp / "upstream" / "data")  # the upstream's own, read-only here
        tls = {"certificate": str(cert), "key": str(key)}
        # Its access log: what the shared part counts as upstream blob bytes.
        config = {"version": 0.1, "log": {"level": "error", "formatter": "text"},
                  "storage": {"filesystem": {"rootdirectory": data},
                              "maintenance": {"readonly": {"enabled": True}}},
                  "http": {"addr": f"{WAN_IP}:443", "tls": tls}}  # fmt: skip
        (folder / "config.yml").write_text(yaml.safe_dump(config))
        log = folder / "log"
        proc = wan.start("docker-registry", "serve", str(folder / "config.yml"), log=log)
        self.wait_port(WAN_IP, 443, proc, log)
        return Server(proc, log)

    def proxy(self) -> Server:
        remote = {"proxy": {"remoteurl": f"https://{UPSTREAM}"}}
        return self.registry("proxy", PROXY_IP, remote, PROXY)

    def regcache(self, **overrides: object) -> Server:
        """A fresh regcache (empty store)."""
        shutil.rmtree(self.state, ignore_errors=True)
        registries = example_registries()
        for registry in registries:
            if registry["name"] == QUAY:
                registry["tag_ttl_s"] = 300
        config = {
            "state_dir": str(self.state), "log_level": "WARNING",
            "listen": {"dns": [f"{REGCACHE_IP}:53"], "https": [f"{REGCACHE_IP}:443"]},
            "appliance": {"ipv4": REGCACHE_IP},
            "dns": {"upstreams": [f"{RESOLVER_IP}:53"], "rate_limit_qps": 0},
            "upstream": {"ca_bundle": str(self.ca.pem)},
            "resolve": {HUB: [UPSTREAM_IP], QUAY: [UPSTREAM_IP], GHCR: [WAN_IP]},
            "tls": yaml.safe_load((REPO / "config.example.yaml").read_text())["tls"],
            "registries": registries, **overrides,
        }  # fmt: skip
        path = self.tmp / "regcache.yaml"
        path.write_text(yaml.safe_dump(config))
        log = self.tmp / "regcache.log"
        proc = self.ns.start(
            str(REPO / ".venv/bin/regcache"), "serve", "--config", str(path), log=log
        )
        self.wait_port(REGCACHE_IP, 443, proc, log)
        export = [str(REPO / ".venv/bin/regcache"), "ca", "export", "--config", str(path),
                  "--out", str(self.certs / "regcache-ca.crt")]  # fmt: skip
        subprocess.run(export, check=True, capture_output=True)
        return Server(proc, log)

    def nginx(self) -> Server:
        """nginx serving the blob files of regcache's store by the same URL paths, over
        TLS, one worker per core: what serving a cached file costs at best here."""
        blobs = self.state / "blobs" / "sha256"
        return self._nginx("nginx", NGINX_IP, NGINX, "", f"""
        location ~ "^/v2/.+/blobs/sha256:(?<h2>[0-9a-f]{{2}})(?<rest>[0-9a-f]{{62}})$" {{
            default_type application/octet-stream;
            alias {blobs}/$h2/$h2$rest;
        }}""")  # fmt: skip

    def nginx_cache(self) -> Server:
        """nginx as a TLS-terminating pull-through cache (`proxy_cache`) in front of the
        upstream, the way rpardini/docker-registry-proxy configures it: blobs cached by
        URI for 60 days with one upstream fetch at a time (`proxy_cache_lock`), manifests
        for 1 s, everything else passed through. It verifies no digests. Fresh (empty
        cache) every start."""
        folder = self.tmp / "nginx-cache"  # emptied by `_nginx`
        upstream = f"""
            proxy_pass https://{UPSTREAM_IP}:443;
            proxy_set_header Host {UPSTREAM};
            proxy_ssl_server_name on;
            proxy_ssl_name {UPSTREAM};
            proxy_ssl_verify on;
            proxy_ssl_trusted_certificate {self.ca.pem};
            proxy_http_version 1.1;
            proxy_set_header Connection "";"""
        return self._nginx("nginx-cache", NGINX_CACHE_IP, NGINX_CACHE, f"""
    proxy_cache_path {folder}/cache levels=1:2 keys_zone=registry:16m max_size=64g
                     inactive=60d use_temp_path=off;
    proxy_read_timeout 900s;""", f"""
        location ~ "^/v2/.+/blobs/sha256:[0-9a-f]{{64}}$" {{{upstream}
            proxy_cache registry;
            proxy_cache_key $uri;
            proxy_cache_valid 200 206 60d;
            proxy_cache_lock on;
            proxy_cache_lock_timeout 880s;
            proxy_ignore_headers Cache-Control Expires Set-Cookie X-Accel-Expires;
        }}
        location ~ ^/v2/.+/manifests/ {{{upstream}
            proxy_cache registry;
            proxy_cache_key $uri$http_accept;
            proxy_cache_valid 200 1s;
            proxy_ignore_headers Cache-Control Expires Set-Cookie X-Accel-Expires;
        }}
        location / {{{upstream}
        }}""")  # fmt: skip

    def _nginx(self, name: str, ip: str, host: str, http: str, locations: str) -> Server:
        folder = self.tmp / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
        cert, key = self.ca.issue(name, host)
        (folder / "nginx.conf").write_text(f"""
daemon off;
user root;  # the store is 0700 root (the bench runs as root)
worker_processes auto;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    keepalive_requests 100000;{http}
    server {{
        listen {ip}:443 ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};{locations}
    }}
}}
""")
        log = folder / "out.log"
        proc = self.ns.start("nginx", "-c", str(folder / "nginx.conf"), "-p", str(folder), log=log)
        self.wait_port(ip, 443, proc, log)
        return Server(proc, log)

    def dnsmasq(self, ip: str, *options: str) -> Server:
        log = self.tmp / f"dnsmasq-{ip}.log"
        proc = self.ns.start("dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
                             "--bind-interfaces", f"--listen-address={ip}", "--user=root",
                             "--pid-file=", *options, log=log)  # fmt: skip
        self.wait_port(ip, 53, proc, log)
        return Server(proc, log)

    @contextlib.contextmanager
    def profiled(self, server: Server, name: str) -> Iterator[None]:
        """With --profile: py-spy samples `server` meanwhile (collapsed stacks, idle
        excluded), to PROFILES/<name>.txt."""
        if self.profiles is None:
            yield
            return
        self.profiles.mkdir(parents=True, exist_ok=True)
        out = self.profiles / f"{name}.txt"
        spy = subprocess.Popen(
            [str(REPO / ".venv/bin/py-spy"), "record", "--pid", str(server.proc.pid), "--rate",
             "250", "--format", "raw", "--output", str(out), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(0.5)
        try:
            yield
        finally:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)

    # Clients

    def copy(self, src: str, dest: str) -> float:
        started = time.monotonic()
        out = self.ns.run("skopeo", "--insecure-policy", "copy", "--preserve-digests",
                          "--src-cert-dir", str(self.certs), "--dest-cert-dir", str(self.certs),
                          src, dest, check=False, timeout=1800)  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
        return time.monotonic() - started

    def settle(self, ref: str, start: Callable[[], Server] | None = None) -> None:
        """An unmeasured cold pull of `ref`, direct or through a fresh server from `start`,
        before a measured one of the same kind: on a VM the page cache's cost depends on
        what the run before freed (README.md)."""
        server = start() if start is not None else None
        try:
            self.pull(ref)
        finally:
            if server is not None:
                self.ns.stop(server.proc)

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
        try:
            for proc in procs:
                _, err = proc.communicate(timeout=1800)
                if proc.returncode != 0:
                    raise RuntimeError(err)
        finally:
            for proc in procs:
                proc.kill()
            for i in range(n):
                shutil.rmtree(self.tmp / f"crowd-{i}", ignore_errors=True)
        return time.monotonic() - started

    def client(self, *args: str) -> dict[str, object]:
        argv = [str(REPO / ".venv/bin/python"), str(REPO / "bench/client.py"), *args]
        for ca in self.cas():
            argv += ["--ca", ca]
        out = self.ns.run(*argv, timeout=1800)
        result: dict[str, object] = json.loads(out.stdout)
        return result

    def curl_throughput(self, url: str, clients: int, per_client: int) -> tuple[float, int]:
        """`clients` curl processes at once, each GETting `url` `per_client` times over one
        connection; (wall seconds from the first start to the last end, bytes read)."""
        bundle = self.tmp / "ca-bundle.pem"
        bundle.write_text("".join(Path(ca).read_text() for ca in self.cas()))
        one = "curl -sS --cacert {} -w '%{{http_code}} %{{size_download}}\\n' {}".format(
            bundle, " ".join(f"-o /dev/null '{url}'" for _ in range(per_client))
        )
        script = (
            f"start=$(date +%s%N); for i in $(seq {clients}); do {one} & done; wait; "
            'echo "wall $(( $(date +%s%N) - start ))"'
        )
        out = self.ns.run("bash", "-c", script, timeout=1800)
        lines = out.stdout.splitlines()
        transfers = [line.split() for line in lines[:-1]]
        if len(transfers) != clients * per_client or any(t[0] != "200" for t in transfers):
            raise RuntimeError(f"curl {url}: {out.stdout[:500]} {out.stderr[:1000]}")
        return int(lines[-1].split()[1]) / 1e9, sum(int(t[1]) for t in transfers)

    def dnsperf(self, server: str, names: str | Path, seconds: int) -> float:
        """Queries per second `server` answers for `names` A (one name, or a file of
        `NAME A` lines asked in turn), 4 clients in parallel."""
        if isinstance(names, Path):
            queries = names
        else:
            queries = self.tmp / f"queries-{names}"
            queries.write_text(f"{names} A\n")
        out = self.ns.run("dnsperf", "-s", server, "-d", str(queries), "-l", str(seconds),
                          "-c", "4", "-T", "2", "-q", "200", timeout=seconds + 60)  # fmt: skip
        lost = re.search(r"Queries lost:\s+(\d+)", out.stdout)
        qps = re.search(r"Queries per second:\s+([\d.]+)", out.stdout)
        if qps is None or lost is None:
            raise RuntimeError(out.stdout + out.stderr)
        if int(lost.group(1)) > 0:
            print(f"  dnsperf {server} {queries.name}: {lost.group(1)} queries lost")
        return float(qps.group(1))
