"""The end-to-end lab: a build host's network namespace with regcache as its resolver and
gateway, and real upstream registries (Debian's docker-registry, distribution 2.8) behind
it on their real names, each with TLS from the upstream test CA."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.images import Image, write_layout
from tests.e2e.netns import Netns
from tests.e2e.pki import TestCa
from tests.harness import REPO, example_registries

REGCACHE_IP = "127.0.0.2"
ADMIN_PORT = 9580
# Upstream registries and where they live inside the namespace. registry-1.docker.io
# wants bearer tokens from auth.docker.io; quay.io redirects blob GETs to cdn.quay.io.
UPSTREAMS = {
    "registry-1.docker.io": "127.0.0.3",
    "ghcr.io": "127.0.0.4",
    "quay.io": "127.0.0.8",
    # Registries regcache holds credentials for: gcr.io wants HTTP Basic (htpasswd),
    # public.ecr.aws the token flow with alice's password for everything under private/.
    "gcr.io": "127.0.0.11",
    "public.ecr.aws": "127.0.0.12",
    # Where the registry.k8s.io twin (below) redirects every manifest and blob request:
    # a registry with its own anonymous token step, as Artifact Registry has.
    "us-docker.pkg.dev": "127.0.0.14",
}
BOB_PASSWORD = "bob-Basic-pa55"
ALICE_PASSWORD = "Wonder-1and"
DAVE_PASSWORD = "dave-Pa55word"
TOKEN_HOST, TOKEN_IP = "auth.docker.io", "127.0.0.5"
HUB_HOST = "registry-1.docker.io"
HUB_BEHIND_FRONT_IP = "127.0.0.16"
"""Where the Hub twin listens when a rate-limit front has its address (`front_hub`)."""
CDN_HOST, CDN_IP = "cdn.quay.io", "127.0.0.9"
CDN_RATE_BYTES_S = 16 << 20
# Answers every manifest and blob request with a 307 to us-docker.pkg.dev, unconditionally.
K8S_HOST, K8S_IP = "registry.k8s.io", "127.0.0.13"
# An upstream whose certificate comes from a CA regcache does not trust.
ROGUE_HOST, ROGUE_IP = "mcr.microsoft.com", "127.0.0.10"
_ACCESS = re.compile(
    r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3}) (?P<bytes>\d+|-)'
)


@dataclass
class Registry:
    host: str
    ip: str
    folder: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def requests(self) -> list[tuple[str, str, int, int]]:
        """(method, path, status, body bytes) from the registry's own access log."""
        out = []
        for match in _ACCESS.finditer(self.log.read_text(errors="replace")):
            size = 0 if match.group("bytes") == "-" else int(match.group("bytes"))
            out.append(
                (match.group("method"), match.group("path"), int(match.group("status")), size)
            )
        return out

    def count(self, method: str, kind: str, status: int | None = None) -> int:
        return sum(
            1 for m, path, st, _ in self.requests()
            if m == method and f"/{kind}/" in path and "/uploads/" not in path
            and (status is None or st == status)
        )  # fmt: skip

    def blob_bytes_sent(self) -> int:
        return sum(
            size for m, path, st, size in self.requests()
            if m == "GET" and "/blobs/sha256:" in path and st in (200, 206)
        )  # fmt: skip


@dataclass
class Lab:
    ns: Netns
    tmp: Path
    ca_dir: Path
    """Holds regcache's CA as `ca.crt`: what a build host trusts, and nothing else."""
    state_dir: Path
    regcache_log: Path
    registries: dict[str, Registry] = field(default_factory=dict)
    token_log: Path | None = None
    token_proc: subprocess.Popen[bytes] | None = None
    redirector_proc: subprocess.Popen[bytes] | None = None
    upstream_ca: TestCa | None = None
    config_path: Path | None = None
    regcache_proc: subprocess.Popen[bytes] | None = None
    cdn_corrupt: Path | None = None
    """Digests listed here (one per line) are served with a flipped first byte by the CDN."""
    cdn_faults: Path | None = None
    """JSON {digest: fault} the CDN obeys (see servers.cdn_app)."""
    command: tuple[str, ...] = (str(REPO / ".venv" / "bin" / "regcache"),)
    """How regcache is started (a test may wrap it, e.g. to move its clock)."""
    ratelimit_remaining: Path | None = None
    """With `lab(front_hub=True)`: what the Hub twin's `ratelimit-remaining` says."""
    front_log: Path | None = None
    """…and every request it got, `METHOD PATH` per line."""
    front_proc: subprocess.Popen[bytes] | None = None

    def start_regcache(self) -> None:
        assert self.config_path is not None
        self.regcache_proc = self.ns.start(
            *self.command, "serve", "--config", str(self.config_path), log=self.regcache_log,
            cwd=REPO,
        )  # fmt: skip
        _wait_port(self.ns, REGCACHE_IP, 443, self.regcache_proc, self.regcache_log)

    def stop_upstream(self) -> None:
        """Every upstream registry and the token realm go away (connections refused)."""
        for reg in self.registries.values():
            if reg.proc is not None:
                self.ns.stop(reg.proc)
        for proc in (self.token_proc, self.redirector_proc, self.front_proc):
            if proc is not None:
                self.ns.stop(proc)

    def fault(self, host: str, status: int) -> subprocess.Popen[bytes]:
        """`host`'s address answers every request with `status` (stop its registry first)."""
        assert self.upstream_ca is not None
        cert, key = self.upstream_ca.cert_files(host)
        ip = UPSTREAMS[host]
        proc = _python_server(self.ns, self.tmp / f"fault-{host}.log", "fault", "--listen",
                              f"{ip}:443", "--cert", str(cert), "--key", str(key),
                              "--status", str(status))  # fmt: skip
        _wait_port(self.ns, ip, 443, proc, self.tmp / f"fault-{host}.log")
        return proc

    def restart_regcache(self) -> None:
        assert self.regcache_proc is not None
        self.ns.stop(self.regcache_proc)
        self.start_regcache()

    def skopeo(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return self.ns.run("skopeo", "--insecure-policy", *args, timeout=timeout, check=False)

    def push(
        self, host: str, repository: str, tag: str, img: Image, creds: str | None = None
    ) -> None:
        """Push through regcache (its pass-through path), as a build host would."""
        layout = write_layout(
            self.tmp / f"push-{host}-{repository.replace('/', '_')}-{tag}", tag, img
        )
        out = self.skopeo(
            "copy", "--all", "--preserve-digests", "--dest-cert-dir", str(self.ca_dir),
            *(["--dest-creds", creds] if creds else []),
            f"oci:{layout}:{tag}", f"docker://{host}/{repository}:{tag}",
        )  # fmt: skip
        assert out.returncode == 0, out.stderr

    def push_upstream(
        self, host: str, repository: str, tag: str, img: Image, creds: str | None = None
    ) -> None:
        """Push straight to the upstream registry, around regcache: what a publisher
        does (and the only way to push where regcache holds credentials: it answers
        that registry's ping without a challenge, so clients never log in through it).
        skopeo runs in a mount namespace of its own whose /etc/hosts names the upstream."""
        assert self.upstream_ca is not None
        certs = self.tmp / "upstream-certs"
        certs.mkdir(exist_ok=True)
        (certs / "ca.crt").write_bytes(self.upstream_ca.pem.read_bytes())
        hosts = self.tmp / "hosts-upstream"
        real = {**UPSTREAMS, TOKEN_HOST: TOKEN_IP, CDN_HOST: CDN_IP}
        hosts.write_text("".join(f"{ip} {name}\n" for name, ip in real.items()))
        layout = write_layout(
            self.tmp / f"direct-{host}-{repository.replace('/', '_')}-{tag}", tag, img
        )
        skopeo = " ".join([
            "skopeo", "--insecure-policy", "copy", "--all", "--preserve-digests",
            "--dest-cert-dir", str(certs), *(["--dest-creds", creds] if creds else []),
            f"oci:{layout}:{tag}", f"docker://{host}/{repository}:{tag}",
        ])  # fmt: skip
        out = self.ns.run("unshare", "--mount", "sh", "-c",
                          f"mount --bind {hosts} /etc/hosts && exec {skopeo}",
                          timeout=600, check=False)  # fmt: skip
        assert out.returncode == 0, out.stderr

    def pull_argv(self, ref: str, dest: Path, creds: str | None = None) -> list[str]:
        """skopeo copying `ref` through regcache into an OCI layout, bytes unchanged."""
        return self.ns.argv(
            "skopeo", "--insecure-policy", "copy", "--all", "--preserve-digests",
            "--src-cert-dir", str(self.ca_dir), *(["--src-creds", creds] if creds else []),
            f"docker://{ref}", f"oci:{dest}:x",
        )  # fmt: skip

    def pull(
        self, ref: str, name: str, creds: str | None = None
    ) -> tuple[subprocess.CompletedProcess[str], Path]:
        dest = self.tmp / f"pull-{name}"
        argv = self.pull_argv(ref, dest, creds)
        return subprocess.run(argv, capture_output=True, text=True, timeout=600), dest

    def inspect_raw(self, ref: str) -> str:
        out = self.skopeo("inspect", "--raw", "--cert-dir", str(self.ca_dir), f"docker://{ref}")
        assert out.returncode == 0, out.stderr
        return out.stdout


@contextlib.contextmanager
def tmpfs(path: Path, size: int) -> Iterator[Path]:
    """A tmpfs of `size` bytes mounted at `path` (a disk that fills on demand), unmounted
    afterwards, also when the test fails."""
    path.mkdir(exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], check=True
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "--lazy", str(path)], check=False)


def _registry_config(reg: Registry, cert: Path, key: Path, extra: dict[str, object]) -> str:
    config = {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
        "storage": {"filesystem": {"rootdirectory": str(reg.folder / "data")},
                    "delete": {"enabled": True}},
        "http": {"addr": f"{reg.ip}:443", "host": f"https://{reg.host}",
                 "tls": {"certificate": str(cert), "key": str(key)}},
        **extra,
    }  # fmt: skip
    return yaml.safe_dump(config)


def _wait_port(ns: Netns, ip: str, port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{log.name} exited:\n{log.read_text()}")
        probe = ns.run("bash", "-c", f"exec 3<>/dev/tcp/{ip}/{port}", check=False, timeout=5)
        if probe.returncode == 0:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{ip}:{port} did not open:\n{log.read_text()}")


def _lab_registry(registry: dict[str, object], tmp: Path) -> dict[str, object]:
    """The example registries, plus what the lab needs of some of them."""
    extra: dict[str, object] = {
        # quay.io's twin serves tags from the store for 5 minutes between checks.
        "quay.io": {"tag_ttl_s": 300},
        "gcr.io": {"credentials": {"method": "basic", "username": "bob",
                                   "password": {"file": str(tmp / "bob-password")}}},
        "public.ecr.aws": {"credentials": {"method": "token", "username": "alice",
                                           "password": {"env": "REGCACHE_TEST_ALICE_PASSWORD"}}},
    }.get(str(registry["name"]), {})  # fmt: skip
    assert isinstance(extra, dict)
    return {**registry, **extra}


def _python_server(ns: Netns, log: Path, *args: str) -> subprocess.Popen[bytes]:
    return ns.start(str(REPO / ".venv" / "bin" / "python"), "-m", "tests.e2e.servers", *args,
                    log=log, cwd=REPO)  # fmt: skip


@contextlib.contextmanager
def lab(
    tmp: Path,
    tweak: Callable[[dict[str, Any]], None] | None = None,
    command: tuple[str, ...] | None = None,
    *,
    front_hub: bool = False,
) -> Iterator[Lab]:
    """The lab; `tweak` may change regcache's config before its first start, `command`
    replaces how regcache is started; `front_hub` puts a proxy adding Docker Hub's
    rate-limit headers in front of the Hub twin (`Lab.ratelimit_remaining`)."""
    ca = TestCa(tmp)
    signing_cert, signing_key = ca.issue("token-signing", "token-signing")
    with Netns(REGCACHE_IP) as ns:
        the_lab = Lab(ns, tmp, tmp / "regcache-ca", tmp / "state", tmp / "regcache.log")
        if command is not None:
            the_lab.command = command
        extras: dict[str, dict[str, object]] = {
            "registry-1.docker.io": {"auth": {"token": {
                "realm": f"https://{TOKEN_HOST}/token", "service": "registry.docker.io",
                "issuer": "regcache-test-issuer", "rootcertbundle": str(ca.pem)}}},
            "quay.io": {"middleware": {"storage": [
                {"name": "redirect", "options": {"baseurl": f"https://{CDN_HOST}/"}}]}},
            "gcr.io": {"auth": {"htpasswd": {"realm": "gcr-twin", "path": str(tmp / "htpasswd")}}},
            "public.ecr.aws": {"auth": {"token": {
                "realm": f"https://{TOKEN_HOST}/token", "service": "ecr-twin",
                "issuer": "regcache-test-issuer", "rootcertbundle": str(ca.pem)}}},
            "us-docker.pkg.dev": {"auth": {"token": {
                "realm": f"https://{TOKEN_HOST}/token", "service": "pkgdev-twin",
                "issuer": "regcache-test-issuer", "rootcertbundle": str(ca.pem)}}},
        }  # fmt: skip
        htpasswd = subprocess.run(  # bcrypt, as distribution requires
            ["htpasswd", "-nbB", "bob", BOB_PASSWORD], capture_output=True, text=True, check=True
        )
        (tmp / "htpasswd").write_text(htpasswd.stdout)
        (tmp / "bob-password").write_text(BOB_PASSWORD + "\n")
        os.environ["REGCACHE_TEST_ALICE_PASSWORD"] = ALICE_PASSWORD  # read by regcache
        for host, ip in UPSTREAMS.items():
            if front_hub and host == HUB_HOST:
                ip = HUB_BEHIND_FRONT_IP
            reg = Registry(host, ip, tmp / host, tmp / f"{host}.log")
            reg.folder.mkdir()
            cert, key = ca.issue(host, host)
            config_text = _registry_config(reg, cert, key, extras.get(host, {}))
            (reg.folder / "config.yml").write_text(config_text)
            reg.proc = ns.start(
                "docker-registry", "serve", str(reg.folder / "config.yml"), log=reg.log
            )
            _wait_port(ns, ip, 443, reg.proc, reg.log)
            the_lab.registries[host] = reg
        if front_hub:
            _front(the_lab, ca)
        cert, key = ca.issue(TOKEN_HOST, TOKEN_HOST)
        the_lab.token_log = tmp / "token-requests.log"
        the_lab.upstream_ca = ca
        proc = the_lab.token_proc = _python_server(
            ns, tmp / "token.log", "token", "--listen", f"{TOKEN_IP}:443", "--cert", str(cert),
            "--key", str(key), "--signing-cert", str(signing_cert), "--signing-key",
            str(signing_key), "--log", str(the_lab.token_log),
        )  # fmt: skip
        _wait_port(ns, TOKEN_IP, 443, proc, tmp / "token.log")
        cert, key = ca.issue(CDN_HOST, CDN_HOST)
        the_lab.cdn_corrupt = tmp / "cdn-corrupt.txt"
        the_lab.cdn_faults = tmp / "cdn-faults.json"
        proc = _python_server(
            ns, tmp / "cdn.log", "cdn", "--listen", f"{CDN_IP}:443", "--cert", str(cert),
            "--key", str(key), "--root", str(the_lab.registries["quay.io"].folder / "data"),
            "--rate", str(CDN_RATE_BYTES_S), "--corrupt", str(the_lab.cdn_corrupt),
            "--faults", str(the_lab.cdn_faults),
        )  # fmt: skip
        _wait_port(ns, CDN_IP, 443, proc, tmp / "cdn.log")
        cert, key = ca.issue(K8S_HOST, K8S_HOST)
        proc = the_lab.redirector_proc = _python_server(
            ns, tmp / "redirector.log", "redirector", "--listen", f"{K8S_IP}:443", "--cert",
            str(cert), "--key", str(key), "--target", "https://us-docker.pkg.dev",
        )  # fmt: skip
        _wait_port(ns, K8S_IP, 443, proc, tmp / "redirector.log")
        (tmp / "rogue").mkdir()
        cert, key = TestCa(tmp / "rogue").issue(ROGUE_HOST, ROGUE_HOST)
        proc = _python_server(
            ns, tmp / "rogue.log", "cdn", "--listen", f"{ROGUE_IP}:443", "--cert", str(cert),
            "--key", str(key), "--root", str(the_lab.registries["quay.io"].folder / "data"),
            "--corrupt", str(tmp / "none"),
        )  # fmt: skip
        _wait_port(ns, ROGUE_IP, 443, proc, tmp / "rogue.log")
        config: dict[str, Any] = {
            "state_dir": str(the_lab.state_dir),
            "listen": {"dns": [f"{REGCACHE_IP}:53"], "https": [f"{REGCACHE_IP}:443"]},
            "appliance": {"ipv4": REGCACHE_IP},
            "admin": {"listen": [f"{REGCACHE_IP}:{ADMIN_PORT}"]},
            "dns": {"upstreams": ["127.0.0.1:9"]},
            "upstream": {"ca_bundle": str(ca.pem)},
            "resolve": {
                host: [ip]
                for host, ip in [
                    *UPSTREAMS.items(),
                    (TOKEN_HOST, TOKEN_IP),
                    (CDN_HOST, CDN_IP),
                    (K8S_HOST, K8S_IP),
                    (ROGUE_HOST, ROGUE_IP),
                ]
            },
            "tls": yaml.safe_load((REPO / "config.example.yaml").read_text())["tls"],
            "registries": [_lab_registry(r, tmp) for r in example_registries()],
        }
        if tweak is not None:
            tweak(config)
        config_path = tmp / "regcache.yaml"
        config_path.write_text(yaml.safe_dump(config))
        the_lab.config_path = config_path
        the_lab.start_regcache()
        the_lab.ca_dir.mkdir()
        export = subprocess.run(
            [str(REPO / ".venv" / "bin" / "regcache"), "ca", "export", "--config", str(config_path),
             "--out", str(the_lab.ca_dir / "ca.crt")],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert export.returncode == 0
        try:
            yield the_lab
        finally:
            os.environ.pop("REGCACHE_TEST_ALICE_PASSWORD", None)


def _front(the_lab: Lab, ca: TestCa) -> None:
    """The rate-limit front on the Hub twin's address, the twin behind it."""
    cert, key = ca.issue("hub-front", HUB_HOST)
    the_lab.ratelimit_remaining = the_lab.tmp / "ratelimit-remaining"
    the_lab.front_log = the_lab.tmp / "front-requests.log"
    ip = UPSTREAMS[HUB_HOST]
    proc = the_lab.front_proc = _python_server(
        the_lab.ns, the_lab.tmp / "front.log", "ratelimit", "--listen", f"{ip}:443", "--cert",
        str(cert), "--key", str(key), "--target", f"https://{HUB_BEHIND_FRONT_IP}:443",
        "--remaining", str(the_lab.ratelimit_remaining), "--log", str(the_lab.front_log),
    )  # fmt: skip
    _wait_port(the_lab.ns, ip, 443, proc, the_lab.tmp / "front.log")


def manifest_digests(raw: str) -> list[str]:
    data = json.loads(raw)
    return [m["digest"] for m in data.get("manifests", [])]
