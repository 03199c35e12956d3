"""regcache deployed the way an operator does it, onto machines that boot systemd: both
Ansible roles from `ansible/site.yml` over SSH into a gateway and two build hosts (`lab`;
one resolves through systemd-resolved), twice, with `regcache doctor` run by the client
role on each build host; then the unit under systemd itself: readiness, a pull by DNS,
the sandbox, a crash, the journal, reload and stop with transfers in flight, an upgrade
and a downgrade. The tests run in file order and share the machines.

The machines have no route out: the venvs are installed from a wheelhouse built here
(`regcache_wheelhouse`), and the packages the roles need are in the machines' root.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tests.deploy.lab import CACHE, REPO, Lab, Machine, run
from tests.e2e import pki
from tests.e2e.images import image, layer, write_layout

ANSIBLE = REPO / "ansible"
BIN = REPO / ".venv" / "bin"
CONFIG = "/etc/regcache/config.yaml"
RESTART_WAIT_S = 30.0
UPSTREAM_HOST = "ghcr.io"
UPSTREAM_IP = "10.231.0.5"
UPSTREAM_CA = "/usr/local/share/regcache-upstream-ca.pem"
IMAGE = f"{UPSTREAM_HOST}/lab/hello:v1"
MIRROR = "regcache.lab.internal:5443"
"""The gateway's mirror-mode name and port (mirror_mode), as build hosts reach it."""
# Layer sizes of the upstream's images (lab/<name>:v1): big ones to have transfers last.
IMAGES = {"hello": (4 << 20, 1 << 20), "big": (24 << 20,), "big2": (24 << 20,)}
# The release before this one, as far as the store is concerned: the last commit whose
# index has schema 5 (6 came with the local registry).
PREVIOUS = "64f7d95"
SITE_PACKAGES = "/opt/regcache/lib/python3.11/site-packages/appliance"

pytestmark = pytest.mark.timeout(1200)


@dataclass
class Deployed:
    lab: Lab
    gateway: Machine
    client: Machine
    resolver: Machine
    """A build host where systemd-resolved runs (the client role's drop-in branch)."""
    inventory: Path
    wheelhouse: Path
    upstream_log: Path
    layers: dict[str, list[str]]
    """The layer digests of each of the upstream's `IMAGES`."""
    runs: list[tuple[float, subprocess.CompletedProcess[str]]] = field(default_factory=list)

    def play(self, *extra: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
        started = time.monotonic()
        out = subprocess.run(
            self.lab.argv(str(BIN / "ansible-playbook"), "-i", str(self.inventory),
                          "-e", f"@{self.inventory.with_name('vars.json')}", *extra, "site.yml"),
            cwd=ANSIBLE, env=env, capture_output=True, text=True, timeout=900, check=False,
        )  # fmt: skip
        self.runs.append((time.monotonic() - started, out))
        return out

    def systemctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.lab.ssh(self.gateway, "systemctl " + " ".join(args))

    def show(self, prop: str) -> str:
        return self.systemctl("show", "-P", prop, "regcache").stdout.strip()


def _wheelhouse(source: Path) -> Path:
    """regcache's dependencies (and setuptools, to build it) as wheels, kept per
    pyproject.toml: what the gateway's pip installs from, with no index. Built from the
    snapshot `source` (pip builds in the tree it is given)."""
    key = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()[:12]
    wheels = CACHE / f"wheels-{key}"
    if not wheels.is_dir():
        building = CACHE / f".wheels-{os.getpid()}"
        shutil.rmtree(building, ignore_errors=True)
        run([str(BIN / "pip"), "wheel", "--quiet", "--wheel-dir", str(building), str(source)],
            timeout=900)  # fmt: skip
        run([str(BIN / "pip"), "download", "--quiet", "--dest", str(building), "setuptools>=68"])
        for own in building.glob("regcache-*.whl"):  # the role builds its own from the source
            own.unlink()
        building.rename(wheels)
    return wheels


def _source(tmp: Path) -> Path:
    """A snapshot of what the role copies: both runs install exactly the same tree."""
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "config.example.yaml"):
        shutil.copy(REPO / name, source / name)
    for name in ("systemd", "appliance"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    return source


def _upstream(lab: Lab, tmp: Path) -> tuple[Path, dict[str, list[str]]]:
    """distribution 2.8 as ghcr.io on a host of its own on the bridge (TLS from a test
    CA the gateway is told to trust), holding the `IMAGES`; their layer digests."""
    (tmp / "upstream").mkdir()
    ca = pki.TestCa(tmp / "upstream")
    cert, key = ca.issue(UPSTREAM_HOST, UPSTREAM_HOST)
    folder, log = tmp / "registry", tmp / "registry.log"
    folder.mkdir()
    (folder / "config.yml").write_text(yaml.safe_dump({
        "version": 0.1,
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": False}},
        "storage": {"filesystem": {"rootdirectory": str(folder / "data")}},
        "http": {"addr": f"{UPSTREAM_IP}:443", "tls": {"certificate": str(cert), "key": str(key)}},
    }))  # fmt: skip
    ns, _ = lab.host("upstream", int(UPSTREAM_IP.rsplit(".", 1)[1]))
    proc = lab.start(log, "docker-registry", "serve", str(folder / "config.yml"), ns=ns)
    deadline = time.monotonic() + 20
    while run(
        lab.argv("bash", "-c", f"exec 3<>/dev/tcp/{UPSTREAM_IP}/443"), check=False
    ).returncode:
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    layers = {}
    for repo, sizes in IMAGES.items():
        img = image([layer(size, f"{repo}-{n}") for n, size in enumerate(sizes)])
        layout = write_layout(tmp / "layouts" / repo, "v1", img)
        pushed = f"docker://{UPSTREAM_IP}/lab/{repo}:v1"
        run(lab.argv("skopeo", "copy", "--quiet", "--dest-tls-verify=false",
                     f"oci:{layout}:v1", pushed))  # fmt: skip
        # What the upstream holds (skopeo compressed the layers on the way).
        raw = run(lab.argv("skopeo", "inspect", "--raw", "--tls-verify=false", pushed)).stdout
        layers[repo] = [str(entry["digest"]) for entry in json.loads(raw)["layers"]]
    return ca.pem, layers


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces, debootstrap, systemd-nspawn")
    for tool in ("debootstrap", "systemd-nspawn", "ssh", "docker-registry", "skopeo"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (make test installs it when run as root)")
    tmp = tmp_path_factory.mktemp("lab")
    source = _source(tmp)
    wheels = _wheelhouse(source)
    with Lab(tmp) as lab:
        upstream_ca, layers = _upstream(lab, tmp)
        gateway = lab.boot("gateway", 10)
        client = lab.boot("client", 20)
        resolver = lab.boot("resolver", 30, install=("systemd-resolved",))
        shutil.copy(upstream_ca, gateway.root / UPSTREAM_CA.lstrip("/"))
        # A build host where BuildKit is configured: the client role adds the CA to it.
        (client.root / "etc/buildkit").mkdir()
        (client.root / "etc/buildkit/buildkitd.toml").write_text("debug = false\n")
        inventory = tmp / "inventory.ini"
        ca = tmp / "regcache-ca.crt"
        inventory.write_text(
            f"[regcache_gateway]\ngateway ansible_host={gateway.address}\n"
            f"[regcache_clients]\nclient ansible_host={client.address}\n"
            f"resolver ansible_host={resolver.address}\n"
            "[all:vars]\nansible_user=root\n"
            f"ansible_ssh_private_key_file={lab.key}\n"
            f"ansible_ssh_common_args='{' '.join(lab.ssh_options()[2:])}'\n"
        )
        arch = run(["dpkg", "--print-architecture"]).stdout.strip()  # the machines' too
        # The test upstream: its address (the lab has no resolver for it) and its CA.
        extra = {
            "resolve": {UPSTREAM_HOST: [UPSTREAM_IP]},
            "upstream": {"ca_bundle": UPSTREAM_CA},
            "mirror_mode": {"names": [MIRROR.split(":")[0]], "listen": ["0.0.0.0:5443"]},
        }
        permitted = yaml.safe_load((REPO / "config.example.yaml").read_text())["tls"]
        (tmp / "vars.json").write_text(json.dumps({
            "regcache_appliance_ipv4": gateway.address, "regcache_client_gateway": gateway.address,
            "regcache_source": str(source), "regcache_wheelhouse": str(wheels),
            "regcache_ca_fetch_dest": str(ca), "regcache_client_ca_src": str(ca),
            "regcache_extra_config": extra,
            "regcache_permitted_domains": [*permitted["permitted_domains"], "lab.internal"],
            # The lab's one upstream: the other registries' names reach the gateway too,
            # but nothing behind it.
            "regcache_client_doctor": True, "regcache_client_doctor_hosts": [UPSTREAM_HOST],
            # One named with its architecture, as apt allows: installed, so nothing to do
            # (the machines could not reach a mirror).
            "regcache_debian_packages": ["python3", "python3-venv", "ca-certificates",
                                         f"iproute2:{arch}"],
        }))  # fmt: skip
        yield Deployed(
            lab, gateway, client, resolver, inventory, wheels, tmp / "registry.log", layers
        )


def test_roles_over_ssh_twice_second_changes_nothing(deployed: Deployed) -> None:
    """Twice: the second run changes nothing on any host. (--check, with a change to
    show, runs in the upgrade test.)"""
    first = deployed.play()
    assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-3000:]
    second = deployed.play()
    assert second.returncode == 0, second.stdout[-6000:] + second.stderr[-3000:]
    recap = second.stdout[second.stdout.index("PLAY RECAP") :]
    for host in ("gateway", "client", "resolver"):
        assert re.search(rf"{host}\s+: ok=\d+\s+changed=0 .*failed=0", recap), (
            recap,
            _changed_tasks(second.stdout),
        )
    # The client role ran the doctor on both build hosts, on both runs, and it passed.
    for out in (first, second):
        assert _task_results(out.stdout, "Run regcache doctor") == {
            "client": "ok", "resolver": "ok"
        }, out.stdout[-3000:]  # fmt: skip
    print(f"boot s: gateway {deployed.gateway.boot_s:.1f}, client {deployed.client.boot_s:.1f}; "
          f"role runs s: {', '.join(f'{s:.0f}' for s, _ in deployed.runs)}")  # fmt: skip
    # Started by the role, under systemd, as the unit says.
    assert deployed.show("ActiveState") == "active"
    assert deployed.show("User") == "regcache"
    # A run cut off after it copied a new package but before the end: the venv's record
    # still names the old one. The next run installs and restarts again.
    marker = deployed.gateway.root / "opt/regcache/installed-from.sha256"
    recorded, pid = marker.read_text(), deployed.show("MainPID")
    marker.write_text("0" * 64 + "  /opt/regcache-dist/regcache-0.0.9-py3-none-any.whl\n")
    again = deployed.play("--limit", "regcache_gateway")
    assert again.returncode == 0, again.stdout[-6000:] + again.stderr[-3000:]
    assert _task_results(again.stdout, "Replace the package's own files") == {"gateway": "changed"}
    assert marker.read_text() == recorded
    assert deployed.show("MainPID") != pid and deployed.show("ActiveState") == "active"
    # The build host resolves through the gateway.
    resolv = deployed.lab.ssh(deployed.client, "cat /etc/resolv.conf").stdout
    assert f"nameserver {deployed.gateway.address}" in resolv


def _task_results(output: str, task: str) -> dict[str, str]:
    """{host: ok|changed|failed|skipping} of the task named `task` in a play's output."""
    found: dict[str, str] = {}
    for block in output.split("\nTASK [")[1:]:
        if block.split("]", 1)[0].endswith(f": {task}"):
            for status, host in re.findall(r"^(ok|changed|failed|fatal|skipping): \[(\w+)\]",
                                           block, re.M):  # fmt: skip
                found[host] = status
    return found


def _changed_tasks(output: str) -> list[str]:
    """ "TASK: host" for each change in a play's output."""
    found = []
    for block in output.split("\nTASK [")[1:] + output.split("\nRUNNING HANDLER [")[1:]:
        task = block.split("]", 1)[0]
        found += [f"{task}: {host}" for host in re.findall(r"^changed: \[(\w+)", block, re.M)]
    return found


def _owner(root: Path, path: str) -> tuple[str, str, str]:
    """(user, group, octal mode) of `path` inside `root`, names from the root's own files."""
    st = (root / path.lstrip("/")).stat()
    users = {int(f[2]): f[0] for f in (line.split(":") for line in
             (root / "etc/passwd").read_text().splitlines())}  # fmt: skip
    groups = {int(f[2]): f[0] for f in (line.split(":") for line in
              (root / "etc/group").read_text().splitlines())}  # fmt: skip
    return users[st.st_uid], groups[st.st_gid], oct(st.st_mode & 0o7777)


def test_what_the_roles_installed(deployed: Deployed) -> None:
    """Files, owners and modes on both machines (read from their roots)."""
    gw, client = deployed.gateway.root, deployed.client.root
    assert _owner(gw, "/etc/regcache/config.yaml") == ("root", "regcache", "0o640")
    assert _owner(gw, "/etc/regcache") == ("root", "regcache", "0o750")
    assert _owner(gw, "/var/lib/regcache") == ("regcache", "regcache", "0o700")
    assert _owner(gw, "/var/lib/regcache/ca/ca.key") == ("regcache", "regcache", "0o600")
    unit = gw / "etc/systemd/system/regcache.service"
    assert unit.read_bytes() == (REPO / "systemd/regcache.service").read_bytes()
    wants = gw / "etc/systemd/system/multi-user.target.wants/regcache.service"
    assert wants.is_symlink() and os.readlink(wants) == "/etc/systemd/system/regcache.service"
    check = deployed.lab.ssh(deployed.gateway, f"/opt/regcache/bin/regcache check-config {CONFIG}")
    assert check.returncode == 0 and ": ok (8 registries" in check.stdout, check.stderr
    pem = (gw / "var/lib/regcache/ca/ca.crt").read_text().strip()
    assert deployed.inventory.with_name("regcache-ca.crt").read_text().strip() == pem  # fetched
    assert _owner(client, "/usr/local/share/ca-certificates/regcache.crt") == (
        "root",
        "root",
        "0o644",
    )
    assert pem in (client / "etc/ssl/certs/ca-certificates.crt").read_text()
    for folder in ("etc/docker/certs.d", "etc/containers/certs.d"):
        for host in ("registry-1.docker.io", "ghcr.io", "quay.io"):
            assert (client / folder / host / "ca.crt").read_text().strip() == pem
    # One wheel, built on the controller, installed into the venv, beside the wheelhouse
    # (one file) it was installed from; no source tree.
    dist = sorted(path.name for path in (gw / "opt/regcache-dist").iterdir())
    assert len(dist) == 2 and dist[1] == "wheelhouse.tar", dist
    assert re.fullmatch(r"regcache-[\w.]+-py3-none-any\.whl", dist[0]), dist
    wheels = {path.name for path in deployed.wheelhouse.iterdir()}
    assert {path.name for path in (gw / "opt/regcache-wheels").iterdir()} == wheels
    assert not (gw / "opt/regcache-src").exists()
    for machine in (client, deployed.resolver.root):  # for the doctor
        assert (machine / "opt/regcache/bin/regcache").is_file()
    buildkit = (client / "etc/buildkit/buildkitd.toml").read_text()
    assert buildkit.startswith("debug = false\n") and '[registry."ghcr.io"]' in buildkit
    assert 'ca = ["/usr/local/share/ca-certificates/regcache.crt"]' in buildkit


def test_start_returns_only_when_listening(deployed: Deployed) -> None:
    """Type=notify: READY=1 after the listeners are up, so the moment `systemctl restart`
    returns, DNS answers and HTTPS accepts (no waiting loop here)."""
    gw = deployed.gateway.address
    out = deployed.lab.ssh(
        deployed.gateway,
        f"systemctl restart regcache && ss -Hltn 'sport = :443' && "
        f"dig +short +time=1 +tries=1 @{gw} ghcr.io",
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"{gw}:443" in out.stdout and out.stdout.strip().endswith(gw), out.stdout
    # ...and the build host gets the same answer from where it stands.
    answer = deployed.lab.ssh(deployed.client, "dig +short +time=2 +tries=1 quay.io")
    assert answer.stdout.strip() == gw, answer.stdout + answer.stderr


def _blob_gets(deployed: Deployed, digest: str) -> int:
    text = deployed.upstream_log.read_text()
    return len(re.findall(rf'"GET /v2/lab/\w+/blobs/{digest} HTTP/[\d.]+" 200', text))


def test_the_build_host_pulls_through_the_gateway_by_dns(deployed: Deployed) -> None:
    """skopeo on the build host, with nothing but what the client role set up (resolver,
    CA): the image comes through the gateway; the second pull from its store."""
    for n in (1, 2):
        pull = deployed.lab.ssh(
            deployed.client,
            f"rm -rf /root/pulled && skopeo copy --quiet docker://{IMAGE} oci:/root/pulled:v1 "
            "&& cd /root/pulled/blobs/sha256 && sha256sum --quiet --check <(for f in *; do "
            'echo "$f  $f"; done) && ls',
        )
        assert pull.returncode == 0, pull.stdout + pull.stderr
        for digest in deployed.layers[
            "hello"
        ]:  # each pulled, and each had the bytes it is named by
            assert digest.removeprefix("sha256:") in pull.stdout.split(), (digest, pull.stdout)
            assert _blob_gets(deployed, digest) == 1, (n, digest)
    # It was the gateway that answered, not the upstream directly (the build host
    # cannot reach it by name: ghcr.io resolves to the gateway only).
    resolved = deployed.lab.ssh(deployed.client, f"getent hosts {UPSTREAM_HOST}").stdout.split()
    assert resolved[0] == deployed.gateway.address


def test_doctor_on_each_build_host(deployed: Deployed) -> None:
    """`regcache doctor`, as the client role installed it: every check passes on both
    build hosts; pointed at an address that is not the gateway, it fails and says why."""
    gw = deployed.gateway.address
    doctor = f"/opt/regcache/bin/regcache doctor --host {UPSTREAM_HOST} --gateway"
    for machine in (deployed.client, deployed.resolver):
        out = deployed.lab.ssh(machine, f"{doctor} {gw}")
        assert out.returncode == 0, out.stdout + out.stderr
        passed = [line.split(":")[0] for line in out.stdout.splitlines()]
        assert passed == [
            f"PASS  dns {UPSTREAM_HOST}", f"PASS  tls {UPSTREAM_HOST} (system)",
            f"PASS  tls {UPSTREAM_HOST} (/etc/docker/certs.d)",
            f"PASS  tls {UPSTREAM_HOST} (/etc/containers/certs.d)",
            f"PASS  api {UPSTREAM_HOST}", "5 passed, 0 failed",
        ], out.stdout  # fmt: skip
    wrong = deployed.lab.ssh(deployed.resolver, f"{doctor} 10.231.0.99")
    assert wrong.returncode == 1, wrong.stdout + wrong.stderr
    assert f"FAIL  dns {UPSTREAM_HOST}: → {gw}, not the gateway 10.231.0.99" in wrong.stdout
    assert "fix: point this host's resolver at 10.231.0.99" in wrong.stdout


def test_a_build_host_with_systemd_resolved_resolves_through_the_gateway(
    deployed: Deployed,
) -> None:
    """The client role's systemd-resolved branch: a drop-in sends every name to the
    gateway, resolv.conf stays resolved's stub, and an image comes through the gateway
    (from its store: the other build host pulled it first). The other build host, without
    resolved, got the resolv.conf branch."""
    gw, root = deployed.gateway.address, deployed.resolver.root
    dropin = (root / "etc/systemd/resolved.conf.d/regcache.conf").read_text()
    assert f"\nDNS={gw}\n" in dropin and "\nDomains=~.\n" in dropin, dropin
    assert os.readlink(root / "etc/resolv.conf").endswith("/run/systemd/resolve/stub-resolv.conf")
    status = deployed.lab.ssh(deployed.resolver, "resolvectl dns; getent hosts quay.io")
    assert f"Global: {gw}" in status.stdout and status.stdout.split()[-2] == gw, status.stdout
    gets = {d: _blob_gets(deployed, d) for d in deployed.layers["hello"]}
    pull = deployed.lab.ssh(
        deployed.resolver, f"skopeo copy --quiet docker://{IMAGE} oci:/root/pulled:v1"
    )
    assert pull.returncode == 0, pull.stdout + pull.stderr
    assert {d: _blob_gets(deployed, d) for d in deployed.layers["hello"]} == gets
    assert not (deployed.client.root / "etc/systemd/resolved.conf.d/regcache.conf").exists()


def test_a_build_host_in_mirror_mode_pulls_through_the_mirror(deployed: Deployed) -> None:
    """The client role switched to mirror mode on the host that had dns mode: dns mode's
    resolved drop-in goes (no resolver is left: registry names do not resolve there), each
    runtime's file names the mirror, a second run changes nothing, and skopeo pulls by the
    registry's name through the mirror (podman's way: the registry in the mirror's path),
    from the gateway's store. The mirror's name comes from /etc/hosts, standing in for the
    site's DNS."""
    machine, gw = deployed.resolver, deployed.gateway.address
    with (machine.root / "etc/hosts").open("a") as hosts:
        hosts.write(f"{gw} {MIRROR.split(':')[0]}\n")
    mode = ("-e", "regcache_client_mode=mirror", "-e", f"regcache_client_mirror={MIRROR}")
    for run_ in ("first", "second"):
        out = deployed.play(*mode, "--limit", "resolver")
        assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
        if run_ == "second":
            assert "changed=0" in out.stdout.split("PLAY RECAP")[-1], _changed_tasks(out.stdout)
    root = machine.root
    assert not (root / "etc/systemd/resolved.conf.d/regcache.conf").exists()
    hosts_toml = (root / "etc/containerd/certs.d/ghcr.io/hosts.toml").read_text()
    assert 'server = "https://ghcr.io"' in hosts_toml and f'[host."https://{MIRROR}"]' in hosts_toml
    hub = (root / "etc/containerd/certs.d/docker.io/hosts.toml").read_text()
    assert 'server = "https://registry-1.docker.io"' in hub
    daemon = json.loads((root / "etc/docker/daemon.json").read_text())
    assert daemon == {"registry-mirrors": [f"https://{MIRROR}"]}
    assert f'location = "{MIRROR}/ghcr.io"' in (
        root / "etc/containers/registries.conf.d/50-regcache.conf").read_text()  # fmt: skip
    assert (root / f"etc/containers/certs.d/{MIRROR}/ca.crt").exists()
    assert deployed.lab.ssh(machine, f"getent hosts {UPSTREAM_HOST}").returncode != 0
    gets = {d: _blob_gets(deployed, d) for d in deployed.layers["hello"]}
    pull = deployed.lab.ssh(
        machine, f"rm -rf /root/m && skopeo copy docker://{IMAGE} oci:/root/m:v1"
    )
    assert pull.returncode == 0, pull.stdout + pull.stderr
    assert {d: _blob_gets(deployed, d) for d in deployed.layers["hello"]} == gets


def test_security_exposure_inside_the_machine(deployed: Deployed) -> None:
    out = deployed.lab.ssh(deployed.gateway, "systemd-analyze security --no-pager regcache")
    found = re.search(r"Overall exposure level for regcache.service: ([0-9.]+)", out.stdout)
    assert found, out.stdout[-2000:] + out.stderr
    print(f"systemd-analyze security regcache: {found.group(1)}")
    assert float(found.group(1)) <= 2.0, out.stdout


def test_the_sandbox_holds(deployed: Deployed) -> None:
    """The running process: only CAP_NET_BIND_SERVICE, and writes only where the unit
    lets it (tried from inside its own mount namespace, as its own user)."""
    pid = deployed.show("MainPID")
    status = deployed.lab.ssh(
        deployed.gateway, f"grep -E '^Cap(Eff|Prm|Bnd|Amb):' /proc/{pid}/status"
    )
    caps = dict(line.split(":\t") for line in status.stdout.strip().splitlines())
    assert {k: int(v, 16) for k, v in caps.items()} == {
        "CapPrm": 1 << 10, "CapEff": 1 << 10, "CapBnd": 1 << 10, "CapAmb": 1 << 10,
    }, caps  # fmt: skip
    inside = f"nsenter -t {pid} -m -S $(id -u regcache) -G $(id -g regcache) --"
    for path in ("/var/lib/regcache/.probe", "/var/log/regcache/.probe"):
        wrote = deployed.lab.ssh(deployed.gateway, f"{inside} touch {path} && {inside} rm {path}")
        assert wrote.returncode == 0, (path, wrote.stderr)
    for path in ("/etc/regcache/x", "/opt/regcache/x", "/usr/local/x", "/root/x", "/var/lib/x"):
        refused = deployed.lab.ssh(deployed.gateway, f"{inside} touch {path}")
        assert refused.returncode != 0, path
        assert "Read-only file system" in refused.stderr or "Permission denied" in refused.stderr
        assert deployed.lab.ssh(deployed.gateway, f"test ! -e {path}").returncode == 0, path
    # /tmp and /var/tmp are its own (PrivateTmp): not the machine's.
    for path in ("/tmp/.probe", "/var/tmp/.probe"):
        assert deployed.lab.ssh(deployed.gateway, f"{inside} touch {path}").returncode == 0
        assert deployed.lab.ssh(deployed.gateway, f"test ! -e {path}").returncode == 0


def test_kill_9_restarts_it_and_the_store_stays_intact(deployed: Deployed) -> None:
    before = deployed.show("MainPID")
    restarts = int(deployed.show("NRestarts"))
    assert deployed.lab.ssh(deployed.gateway, f"kill -9 {before}").returncode == 0
    deadline = time.monotonic() + RESTART_WAIT_S
    while True:  # bounded: RestartSec=2s, then READY=1
        pid, state = deployed.show("MainPID"), deployed.show("ActiveState")
        if state == "active" and pid not in ("0", before):
            break
        assert time.monotonic() < deadline, (pid, state, deployed.systemctl("status", "regcache"))
        time.sleep(0.5)
    assert int(deployed.show("NRestarts")) == restarts + 1
    verify = deployed.lab.ssh(
        deployed.gateway,
        f"runuser -u regcache -- /opt/regcache/bin/regcache cache verify --config {CONFIG}",
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    gw = deployed.gateway.address
    assert (
        deployed.lab.ssh(
            deployed.client, f"dig +short +time=2 +tries=1 @{gw} ghcr.io"
        ).stdout.strip()
        == gw
    )


def _journal(deployed: Deployed, since: str = "") -> list[dict[str, str]]:
    cursor = f" --after-cursor='{since}'" if since else ""
    out = deployed.lab.ssh(deployed.gateway, f"journalctl -u regcache -o json --no-pager{cursor}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def test_journald_gets_each_line_with_its_priority(deployed: Deployed) -> None:
    """Its lines arrive by unit, user and syslog priority (`journalctl -p`), without
    a timestamp of their own; a refused reload shows as an error and changes nothing."""
    uid = deployed.lab.ssh(deployed.gateway, "id -u regcache").stdout.strip()
    records = _journal(deployed)
    ready = [r for r in records if "regcache ready" in r["MESSAGE"]]
    assert ready and all(r["PRIORITY"] == "6" for r in ready), records[-5:]
    assert all(r["_SYSTEMD_UNIT"] == "regcache.service" and r["_UID"] == uid for r in ready)
    assert ready[-1]["MESSAGE"].startswith("INFO appliance.main regcache ready")
    pid, cursor = deployed.show("MainPID"), records[-1]["__CURSOR"]
    broken = f"cp {CONFIG} /root/config.good && echo 'log_level: LOUD' >> {CONFIG}"
    assert deployed.lab.ssh(deployed.gateway, broken).returncode == 0
    try:
        assert deployed.systemctl("reload", "regcache").returncode == 0
        deadline = time.monotonic() + RESTART_WAIT_S
        while not (
            refused := [r for r in _journal(deployed, cursor) if "reload refused" in r["MESSAGE"]]
        ):
            assert time.monotonic() < deadline, _journal(deployed, cursor)
            time.sleep(0.5)
        assert refused[0]["PRIORITY"] == "3" and "log_level" in refused[0]["MESSAGE"], refused
        warnings = deployed.lab.ssh(
            deployed.gateway, "journalctl -u regcache -p warning -o cat --no-pager"
        )
        assert "config reload refused" in warnings.stdout
    finally:
        deployed.lab.ssh(deployed.gateway, f"cp /root/config.good {CONFIG}")
    assert deployed.show("MainPID") == pid and deployed.show("ActiveState") == "active"


def _fetch(repo: str, digest: str, out: str, rate: str = "") -> str:
    """A build host's command: one blob through the gateway with curl (at `rate`), then
    its status, length, curl's exit status and the SHA-256 of what it wrote."""
    limit = f"--limit-rate {rate} " if rate else ""
    url = f"https://{UPSTREAM_HOST}/v2/lab/{repo}/blobs/{digest}"
    written = "-w '%{http_code} %{size_download}\\n'"
    return f"curl -sS {limit}-o {out} {written} {url}; echo curl=$?; sha256sum {out}"


def _wait_journal(deployed: Deployed, cursor: str, text: str) -> dict[str, str]:
    deadline = time.monotonic() + RESTART_WAIT_S
    while not (found := [r for r in _journal(deployed, cursor) if text in r["MESSAGE"]]):
        assert time.monotonic() < deadline, (text, _journal(deployed, cursor)[-10:])
        time.sleep(0.3)
    return found[0]


def _upstream_lines(deployed: Deployed, path: str) -> int:
    return deployed.upstream_log.read_text().count(f'"GET {path} ')


def test_reload_applies_log_level_and_offline_and_keeps_a_pull_going(deployed: Deployed) -> None:
    digest = deployed.layers["big"][0]
    warm = deployed.lab.ssh(deployed.client, _fetch("big", digest, "/root/big"))
    assert warm.stdout.startswith("200 "), warm.stdout + warm.stderr  # now in the store
    pid, cursor = deployed.show("MainPID"), _journal(deployed)[-1]["__CURSOR"]
    log = deployed.lab.workdir / "slow-pull.log"
    slow = deployed.lab.ssh_background(
        deployed.client, _fetch("big", digest, "/root/slow", rate="3M"), log
    )  # 24 MiB at 3 MB/s: about 8 s
    time.sleep(1.0)
    edit = (f"cp {CONFIG} /root/config.good && sed -i 's/^log_level: .*/log_level: DEBUG/' "
            f"{CONFIG} && echo 'offline: true' >> {CONFIG}")  # fmt: skip
    try:
        assert deployed.lab.ssh(deployed.gateway, edit).returncode == 0
        assert deployed.systemctl("reload", "regcache").returncode == 0
        _wait_journal(deployed, cursor, "config reloaded log_level=DEBUG offline=True")
        assert slow.poll() is None, log.read_text()  # the pull was in flight throughout
        # Offline now: a pull by tag is answered from the store, upstream not asked.
        manifests = _upstream_lines(deployed, "/v2/lab/hello/manifests/v1")
        inspect = deployed.lab.ssh(deployed.client, f"skopeo inspect --raw docker://{IMAGE}")
        assert inspect.returncode == 0, inspect.stderr
        assert _upstream_lines(deployed, "/v2/lab/hello/manifests/v1") == manifests
        assert any(r["PRIORITY"] == "7" for r in _journal(deployed, cursor))  # DEBUG lines
        assert slow.wait(timeout=60) == 0
        status, _, exited, sha = log.read_text().split()[:4]
        assert (status, exited, sha) == ("200", "curl=0", digest[7:]), log.read_text()
    finally:
        deployed.lab.ssh(deployed.gateway, f"cp /root/config.good {CONFIG}")
        deployed.systemctl("reload", "regcache")
    _wait_journal(deployed, cursor, "config reloaded log_level=INFO offline=False")
    assert deployed.show("MainPID") == pid


def test_stop_during_a_fill_is_clean_and_keeps_the_store(deployed: Deployed) -> None:
    """`systemctl stop` while a blob is coming from upstream (the upstream's traffic to the
    gateway slowed to 2 Mbit/s: 24 MiB take 100 s, far more than the stop's graces; a
    fill that ends within them is committed and indexed instead): regcache cuts the
    download, cancels the fill and exits by itself within TimeoutStopSec, leaves no
    partial file and no unindexed one, and the blob is whole after the next start."""
    digest = deployed.layers["big2"][0]
    # What the upstream host sends is slowed (a token bucket on its side of the link).
    upstream = f"rclab-{deployed.lab.tag}-upstream"
    shape = ["ip", "netns", "exec", upstream, "tc", "qdisc", "add", "dev", "vi-upstream", "root",
             "tbf", "rate", "2mbit", "burst", "32kb", "latency", "5s"]  # fmt: skip
    run(shape)
    log = deployed.lab.workdir / "cut-pull.log"
    try:
        pull = deployed.lab.ssh_background(
            deployed.client, _fetch("big2", digest, "/root/cut"), log
        )
        deadline = time.monotonic() + RESTART_WAIT_S
        while not deployed.lab.ssh(deployed.gateway, "ls /var/lib/regcache/tmp").stdout.strip():
            assert time.monotonic() < deadline and pull.poll() is None, log.read_text()
            time.sleep(0.2)  # until the fill has a temp file
        cursor = _journal(deployed)[-1]["__CURSOR"]
        stop = deployed.systemctl("stop", "regcache")
        assert stop.returncode == 0, stop.stderr
        assert deployed.show("Result") == "success"  # not "timeout": no SIGKILL was needed
        # How long systemd saw it stopping, not counting the SSH round trips.
        took = (int(deployed.show("InactiveEnterTimestampMonotonic"))
                - int(deployed.show("ActiveExitTimestampMonotonic"))) / 1e6  # fmt: skip
        records = _journal(deployed, cursor)
        said = [r["MESSAGE"] for r in records]
        start = int(records[0]["__REALTIME_TIMESTAMP"]) if records else 0
        print(f"systemctl stop during a fill: {took:.2f} s;", *(
            f"\n  +{(int(r['__REALTIME_TIMESTAMP']) - start) / 1e6:6.2f} s {r['MESSAGE']}"
            for r in records))  # fmt: skip
        assert took < float(deployed.show("TimeoutStopUSec").rstrip("s"))
        # The fill was cancelled before the index closed, not committed behind its back.
        assert not [m for m in said if "index-write-failed" in m or "fill committed" in m], said
        assert [m for m in said if "fill failed" in m and "CancelledError" in m], said
        leftovers = deployed.lab.ssh(deployed.gateway, "ls /var/lib/regcache/tmp").stdout.split()
        assert leftovers == [], leftovers  # its temp file went with it
        pull.wait(timeout=60)
        _, _, exited, sha = log.read_text().split()[:4]
        assert exited != "curl=0" or sha == digest[7:], log.read_text()  # cut, or whole
    finally:
        run([*shape[:6], "del", *shape[7:10]], check=False)
        deployed.systemctl("start", "regcache")
    verify = deployed.lab.ssh(
        deployed.gateway,
        f"runuser -u regcache -- /opt/regcache/bin/regcache cache verify --config {CONFIG}",
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    again = deployed.lab.ssh(deployed.client, _fetch("big2", digest, "/root/whole"))
    status, _, exited, sha = again.stdout.split()[:4]
    assert (status, exited, sha) == ("200", "curl=0", digest[7:]), again.stdout


def _previous_release(tmp: Path, wheelhouse: Path) -> tuple[Path, Path]:
    """The tree of `PREVIOUS` (as a checkout of that release) and its wheel, with one
    module more that the current tree does not have (a file a newer version drops)."""
    found = run(["git", "-C", str(REPO), "cat-file", "-e", f"{PREVIOUS}^{{commit}}"], check=False)
    assert found.returncode == 0, f"{PREVIOUS} is not in this checkout (a shallow clone?)"
    source = tmp / "previous"
    source.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", PREVIOUS, "appliance", "systemd", "pyproject.toml",
         "README.md", "config.example.yaml"], capture_output=True, check=True,
    )  # fmt: skip
    subprocess.run(["tar", "-x", "-C", str(source)], input=archive.stdout, check=True)
    (source / "appliance" / "dropped_later.py").write_text('"""Gone in the next version."""\n')
    run([str(BIN / "pip"), "wheel", "--quiet", "--no-deps", "--no-index", "--find-links",
         str(wheelhouse), "--wheel-dir", str(tmp / "previous-dist"), str(source)])  # fmt: skip
    (wheel,) = (tmp / "previous-dist").glob("regcache-*.whl")
    return source, wheel


def _index_version(deployed: Deployed) -> int:
    out = deployed.lab.ssh(
        deployed.gateway,
        'python3 -c "import sqlite3; print(sqlite3.connect('
        "'file:/var/lib/regcache/index.sqlite?mode=ro', uri=True)"
        ".execute('PRAGMA user_version').fetchone()[0])\"",
    )
    return int(out.stdout)


def test_an_upgrade_keeps_store_and_ca_and_a_downgrade_is_refused(deployed: Deployed) -> None:
    """The previous release deployed afresh (but for the CA, which the build hosts trust
    already) and pulled through; the current one deployed over it by the same playbook:
    index migrated, store and CA kept, pulls still served from the store. Then an index a
    newer release wrote: the unit refuses to start, saying why, and the index stays as it
    was. (Last: it rebuilds the gateway.)"""
    tmp = deployed.inventory.parent
    wipe = (
        "systemctl stop regcache && rm -rf /opt/regcache /opt/regcache-dist && "
        "find /var/lib/regcache -mindepth 1 -maxdepth 1 ! -name ca -exec rm -rf {} +"
    )
    assert deployed.lab.ssh(deployed.gateway, wipe).returncode == 0
    source, wheel = _previous_release(tmp, deployed.wheelhouse)
    # A chosen version: its wheel (regcache_package), its unit and defaults (regcache_source).
    config = json.loads(deployed.inventory.with_name("vars.json").read_text())
    older = {k: v for k, v in config["regcache_extra_config"].items() if k != "mirror_mode"}
    previous = deployed.play("-e", f"regcache_source={source}", "-e", f"regcache_package={wheel}",
                             "-e", json.dumps({"regcache_extra_config": older}),  # before #22
                             "--limit", "regcache_gateway")  # fmt: skip
    assert previous.returncode == 0, previous.stdout[-4000:] + previous.stderr[-2000:]
    installed = deployed.lab.ssh(deployed.gateway, f"ls {SITE_PACKAGES} {SITE_PACKAGES}/kit").stdout
    assert "dropped_later.py" in installed and "journal.py" not in installed, installed
    assert _index_version(deployed) == 5
    pull = f"rm -rf /root/p && skopeo copy --quiet docker://{IMAGE} oci:/root/p:v1"
    assert deployed.lab.ssh(deployed.client, pull).returncode == 0
    ca = (deployed.gateway.root / "var/lib/regcache/ca/ca.crt").read_bytes()
    gets = {d: _blob_gets(deployed, d) for d in deployed.layers["hello"]}

    # What an operator runs first: --check sees the new package, and fails on nothing.
    checked = deployed.play("--check", "--limit", "regcache_gateway")
    assert checked.returncode == 0, checked.stdout[-4000:] + checked.stderr[-2000:]
    assert _task_results(checked.stdout, "Copy the package") == {"gateway": "changed"}
    current = deployed.play("--limit", "regcache_gateway")  # the CA stays: hosts need nothing
    assert current.returncode == 0, current.stdout[-4000:] + current.stderr[-2000:]
    installed = deployed.lab.ssh(deployed.gateway, f"ls {SITE_PACKAGES} {SITE_PACKAGES}/kit").stdout
    assert "dropped_later.py" not in installed and "journal.py" in installed, installed
    assert _index_version(deployed) == 6  # migrated in place
    assert (deployed.gateway.root / "var/lib/regcache/ca/ca.crt").read_bytes() == ca
    assert deployed.lab.ssh(deployed.client, pull).returncode == 0  # the same CA trusted
    assert {d: _blob_gets(deployed, d) for d in deployed.layers["hello"]} == gets  # from the store

    # A newer release's index: refused, unchanged, and systemd says the unit failed.
    future = ("systemctl stop regcache && python3 -c \"import sqlite3; db = sqlite3.connect("
              "'/var/lib/regcache/index.sqlite'); db.execute('PRAGMA user_version = 7'); "
              "db.commit()\" && sha256sum /var/lib/regcache/index.sqlite")  # fmt: skip
    before = deployed.lab.ssh(deployed.gateway, future).stdout
    cursor = _journal(deployed)[-1]["__CURSOR"]
    assert deployed.systemctl("start", "regcache").returncode != 0
    said = " ".join(r["MESSAGE"] for r in _journal(deployed, cursor))
    assert "schema version 7, and this regcache knows versions up to 6" in said, said
    assert "Traceback" not in said
    after = deployed.lab.ssh(deployed.gateway, "sha256sum /var/lib/regcache/index.sqlite").stdout
    assert after == before.splitlines()[-1] + "\n"
    assert not list((deployed.gateway.root / "var/lib/regcache").glob("index.sqlite.corrupt*"))
