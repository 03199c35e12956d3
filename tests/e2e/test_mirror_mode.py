"""Mirror mode: build hosts whose resolver is not regcache's pull through it as a mirror,
each client its own way (containerd's hosts.toml with `?ns=`, dockerd's
registry-mirrors), through the same cache and the same access gate.

The build host here is a second name for the lab's namespace whose resolver answers
nothing and whose hosts file names only the mirror: a pull that went around the mirror
(containerd and dockerd both fall back to the registry itself on errors) would fail.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import _missing
from tests.e2e.images import Image, image, layer
from tests.e2e.lab import ALICE_PASSWORD, DAVE_PASSWORD, REGCACHE_IP, Lab, lab
from tests.e2e.netns import attached
from tests.e2e.test_ctr import NAMESPACE, _missing_ctr, _unmount_leftovers, running_containerd
from tests.harness import REPO

MIRROR_NAME = "regcache.build.internal"
MIRROR = f"{MIRROR_NAME}:5443"
HUB = "registry-1.docker.io"
ALICE = f"alice:{ALICE_PASSWORD}"
DAVE = f"dave:{DAVE_PASSWORD}"
DOCKERD = REPO / ".venv" / "libexec" / "dockerd"


def _mirror_mode(config: dict[str, Any]) -> None:
    config["mirror_mode"] = {"names": [MIRROR_NAME], "listen": [f"{REGCACHE_IP}:5443"]}
    config["tls"]["permitted_domains"] = [*config["tls"]["permitted_domains"], "build.internal"]


@pytest.fixture(scope="module")
def mlab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = _missing() or _missing_ctr()
    if reason:
        pytest.skip(reason)
    with lab(tmp_path_factory.mktemp("mirror-mode"), _mirror_mode) as running:
        yield running


@pytest.fixture(scope="module")
def view(mlab: Lab) -> Iterator[str]:
    """The build host without DNS interception: `ip netns exec <view> …`."""
    assert mlab.regcache_proc is not None
    with attached(mlab.regcache_proc.pid, "127.0.0.1", f"{mlab.ns.name}-m") as name:
        (Path("/etc/netns") / name / "hosts").write_text(
            f"127.0.0.1 localhost\n{REGCACHE_IP} {MIRROR_NAME}\n"
        )
        yield name


@pytest.fixture(scope="module")
def hosts_dir(mlab: Lab) -> Path:
    """containerd's hosts.toml files as `regcache client-config containerd` writes them."""
    out = mlab.tmp / "certs.d"
    argv = [str(REPO / ".venv/bin/regcache"), "client-config", "containerd", "--config",
            str(mlab.config_path), "--gateway", MIRROR, "--ca", str(mlab.ca_dir / "ca.crt"),
            "--out", str(out)]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    return out


def _fetch(
    mlab: Lab, view: str, hosts_dir: Path, ref: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    """`ctr content fetch` on the build host without interception, through a fresh
    containerd (nothing of an earlier fetch is in its content store)."""
    with running_containerd(mlab) as daemon:
        argv = ["ip", "netns", "exec", view, "ctr", "--address", str(daemon.address),
                "--namespace", NAMESPACE, "content", "fetch", "--hosts-dir", str(hosts_dir),
                "--http-dump", *extra, ref]  # fmt: skip
        return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)


def _blob_gets(mlab: Lab, host: str) -> int:
    return mlab.registries[host].count("GET", "blobs", 200)


def _audited(mlab: Lab, repository: str) -> list[dict[str, Any]]:
    path = mlab.state_dir / "audit.jsonl"
    entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in entries if e.get("repository") == repository]


def test_ctr_pulls_through_the_mirror_by_ns_and_the_second_pull_is_from_the_store(
    mlab: Lab, view: str, hosts_dir: Path
) -> None:
    img = image([layer(1 << 20, "mm-ghcr"), layer(300_000, "mm-ghcr-2")])
    mlab.push_upstream("ghcr.io", "org/mm", "v1", img)
    before = _blob_gets(mlab, "ghcr.io")
    first = _fetch(mlab, view, hosts_dir, "ghcr.io/org/mm:v1")
    assert first.returncode == 0, first.stdout + first.stderr
    dump = first.stdout + first.stderr
    assert "ns=ghcr.io" in dump and f"Host: {MIRROR}" in dump  # containerd's way, to us
    assert "Oci-Namespace: ghcr.io" in dump or "OCI-Namespace: ghcr.io" in dump
    filled = _blob_gets(mlab, "ghcr.io")
    assert filled - before == len(img.blobs)  # config and layers, each once
    second = _fetch(mlab, view, hosts_dir, "ghcr.io/org/mm:v1")
    assert second.returncode == 0, second.stdout + second.stderr
    assert _blob_gets(mlab, "ghcr.io") == filled  # all from the store
    entries = _audited(mlab, "org/mm")
    assert {e["registry"] for e in entries} == {"ghcr.io"}  # stats name the registry
    assert any(e["outcome"] == "hit" for e in entries)


@pytest.fixture(scope="module")
def dockerd(mlab: Lab) -> Iterator[Path]:
    """dockerd with `registry-mirrors` on the build host without interception; its API
    socket. Started with nsenter, not `ip netns exec`, which would mount a /sys without
    the cgroup hierarchies dockerd insists on."""
    if not DOCKERD.exists():
        pytest.skip("dockerd is missing (make test fetches it when run as root)")
    home = mlab.tmp / "dockerd"
    home.mkdir()
    (home / "hosts").write_text(f"127.0.0.1 localhost\n{REGCACHE_IP} {MIRROR_NAME}\n")
    (home / "resolv.conf").write_text("nameserver 127.0.0.1\n")
    (home / "daemon.json").write_text(json.dumps({
        "registry-mirrors": [f"https://{MIRROR}"], "storage-driver": "vfs", "iptables": False,
        "ip6tables": False, "bridge": "none", "ip-masq": False,
    }))  # fmt: skip
    sockets = Path(tempfile.mkdtemp(prefix="rcdockerd-"))
    socket = sockets / "docker.sock"
    script = (
        f"mount --bind {home / 'hosts'} /etc/hosts && "
        f"mount --bind {home / 'resolv.conf'} /etc/resolv.conf && "
        f"exec env SSL_CERT_FILE={mlab.ca_dir / 'ca.crt'} {DOCKERD} --config-file "
        f"{home / 'daemon.json'} --data-root {home / 'data'} --exec-root {sockets / 'exec'} "
        f"--pidfile {sockets / 'dockerd.pid'} -H unix://{socket}"
    )
    log = home / "dockerd.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            ["nsenter", f"--net=/var/run/netns/{mlab.ns.name}", "unshare", "--mount",
             "--propagation", "private", "sh", "-c", script],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while _docker_api(socket, "GET", "/_ping").stdout != "OK":
            assert proc.poll() is None, f"dockerd exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"dockerd did not answer:\n{log.read_text()}"
            time.sleep(0.3)
        yield socket
    finally:
        mlab.ns.stop(proc, timeout=20)
        _unmount_leftovers(home)
        shutil.rmtree(sockets, ignore_errors=True)


def _docker_api(socket: Path, method: str, path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--unix-socket", str(socket), "-X", method, f"http://docker{path}"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def _docker_pull(socket: Path, name: str, tag: str) -> str:
    """`docker pull name:tag` through the daemon's API; the last progress message."""
    done = _docker_api(socket, "POST", f"/images/create?fromImage={name}&tag={tag}")
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert lines, done.stderr
    last = lines[-1]
    assert "error" not in last, last
    return str(last.get("status", ""))


def test_dockerd_pulls_docker_hub_images_through_its_registry_mirror(
    mlab: Lab, view: str, hosts_dir: Path, dockerd: Path
) -> None:
    img = image([layer(1 << 20, "mm-hub")])
    mlab.push_upstream(HUB, "library/mmhub", "v1", img)
    before = _blob_gets(mlab, HUB)
    status = _docker_pull(dockerd, "mmhub", "v1")  # dockerd asks /v2/library/mmhub, no ns
    assert "Downloaded newer image" in status, status
    filled = _blob_gets(mlab, HUB)
    assert filled - before == len(img.blobs)
    fetched = _fetch(mlab, view, hosts_dir, "docker.io/library/mmhub:v1")  # containerd: ns
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    assert "ns=docker.io" in fetched.stdout + fetched.stderr
    assert _blob_gets(mlab, HUB) == filled
    log = (mlab.tmp / "dockerd" / "dockerd.log").read_text()
    assert "Attempting next endpoint" not in log  # no fallback around the mirror


def test_private_images_reach_only_their_owner_through_the_mirror(
    mlab: Lab, view: str, hosts_dir: Path
) -> None:
    private = image([layer(1 << 20, "mm-private"), layer(100_000, "mm-private-2")])
    mlab.push_upstream(HUB, "private/mm", "v1", private, creds=ALICE)
    own = _fetch(mlab, view, hosts_dir, "docker.io/private/mm:v1", "--user", ALICE)
    assert own.returncode == 0, own.stdout + own.stderr  # alice's password went to the mirror
    stranger = _fetch(mlab, view, hosts_dir, "docker.io/private/mm:v1")
    assert stranger.returncode != 0
    _leakcheck(mlab, private)


def _leakcheck(mlab: Lab, private: Image) -> None:
    """#9's randomised probes of owners and strangers, sent to the mirror endpoint."""
    repositories = {"private/mm": [
        [b.digest, b.digest.removeprefix("sha256:"),
         "manifests" if b.media_type.endswith("manifest.v1+json") else "blobs"]
        for b in (private.top, *private.blobs)
    ]}  # fmt: skip
    mlab.push_upstream(HUB, "library/mmpub", "v1", image([layer(1000, "mmpub")]))
    mlab.push_upstream("ghcr.io", "org/mmx", "v1", image([layer(1000, "mmx")]))
    spec = mlab.tmp / "leakcheck-mirror.json"
    spec.write_text(json.dumps({
        "ca": str(mlab.ca_dir / "ca.crt"), "host": HUB, "repositories": repositories,
        "elsewhere": [[HUB, "library/mmpub"], ["ghcr.io", "org/mmx"], ["ghcr.io", "private/mm"]],
        "alice": ALICE, "dave": DAVE, "requests": 300, "seed": 20261206, "mirror": MIRROR,
    }))  # fmt: skip
    out = mlab.ns.run(str(REPO / ".venv/bin/python"), "-m", "tests.e2e.leakcheck", str(spec),
                      timeout=300, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["leaks"] == [] and summary["errors"] == [] and summary["wrong_bytes"] == []
    assert summary["ok"] > 20 and summary["refused"] > 100  # both kinds really happened


def test_the_mirror_words_its_answers_as_a_proxy(mlab: Lab) -> None:
    """`OCI-Namespace` echoes ns; challenges name the relay on the mirror's own name;
    a push is refused there; an unknown registry is not served."""
    img = image([layer(1000, "mm-words")])
    mlab.push_upstream(HUB, "library/mmwords", "v1", img)
    head = _curl(mlab, "-I", f"https://{MIRROR}/v2/library/mmwords/manifests/v1?ns=docker.io")
    assert head.startswith("HTTP/1.1 401"), head
    assert "oci-namespace: docker.io" in head.lower()
    assert f'realm="https://{MIRROR}/_realm/auth.docker.io/token"' in head
    refused = _curl(mlab, "-X", "POST", f"https://{MIRROR}/v2/library/x/blobs/uploads/")
    assert "405" in refused.splitlines()[0] and "UNSUPPORTED" in refused
    unknown = _curl(mlab, f"https://{MIRROR}/v2/a/b/manifests/v1?ns=registry.example.org")
    assert "421" in unknown.splitlines()[0]


def _curl(mlab: Lab, *args: str) -> str:
    out = mlab.ns.run("curl", "-sS", "-i", "--cacert", str(mlab.ca_dir / "ca.crt"), *args,
                      timeout=60, check=False)  # fmt: skip
    return out.stdout


def test_podman_style_mirrors_reach_a_token_registry_other_than_the_default(
    mlab: Lab, view: str
) -> None:
    """podman and skopeo name the registry in the mirror's path and ask for a token with
    the challenge of the mirror's ping, which is the default registry's (Docker Hub's):
    the relay sends a token request whose scope names another registry to that
    registry's own realm and service, so its token works there."""
    pkgdev = "us-docker.pkg.dev"
    img = image([layer(300_000, "mm-podman")])
    mlab.push_upstream(pkgdev, "proj/mm", "v1", img)
    conf = mlab.tmp / "podman"
    argv = [str(REPO / ".venv/bin/regcache"), "client-config", "podman", "--config",
            str(mlab.config_path), "--registry", pkgdev, "--out", str(conf)]  # fmt: skip
    assert subprocess.run(argv, capture_output=True, timeout=60, check=False).returncode == 0
    before = _blob_gets(mlab, pkgdev)
    assert mlab.token_log is not None
    tokens_before = len(mlab.token_log.read_text().splitlines())
    pull = ["ip", "netns", "exec", view, "skopeo", "--insecure-policy", "--registries-conf",
            str(conf / "50-regcache.conf"), "copy", "--src-cert-dir", str(mlab.ca_dir),
            f"docker://{pkgdev}/proj/mm:v1", f"oci:{mlab.tmp / 'podman-pull'}:x"]  # fmt: skip
    done = subprocess.run(pull, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert _blob_gets(mlab, pkgdev) - before == len(img.blobs)  # through the mirror, filled
    asked = [json.loads(line) for line in mlab.token_log.read_text().splitlines()[tokens_before:]]
    assert {"service": "pkgdev-twin", "scopes": ["repository:proj/mm:pull"], "user": None} in (
        asked
    ), asked  # that registry's token: its realm's service, its repository's name
