"""The Ansible roles: lint, syntax, and a real run of both against a Debian root
filesystem this test builds with debootstrap (chroot connection), twice: the second run
must change nothing.

The chroot cannot run services, so `regcache_start=false`: the unit is installed and
enabled (its symlink is checked) but not started; the Vagrant lab starts it for real.
"""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ANSIBLE = REPO / "ansible"
BIN = REPO / ".venv" / "bin"
MIRROR = os.environ.get("REGCACHE_DEBIAN_MIRROR", "http://deb.debian.org/debian")
GATEWAY = "192.0.2.10"


def _run(*argv: str, cwd: Path = ANSIBLE, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_roles_pass_ansible_lint_and_syntax_check() -> None:
    lint = _run(str(BIN / "ansible-lint"), "--offline", "--nocolor")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "criteria was 'production'" in lint.stdout + lint.stderr
    syntax = _run(str(BIN / "ansible-playbook"), "--syntax-check", "site.yml")
    assert syntax.returncode == 0, syntax.stdout + syntax.stderr


@pytest.fixture(scope="module")
def debian_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("needs root for debootstrap and chroot")
    if shutil.which("debootstrap") is None:
        pytest.skip("debootstrap is not installed (make test installs it when run as root)")
    root = tmp_path_factory.mktemp("debian") / "root"
    out = subprocess.run(
        ["debootstrap", "--variant=minbase", "--include=python3,python3-venv,systemd,"
         "ca-certificates,iproute2", "bookworm", str(root), MIRROR],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    # The root trusts what this machine trusts (a TLS-inspecting proxy's CA, say), so
    # that pip inside it reaches the package index as this machine does.
    local_cas = Path("/usr/local/share/ca-certificates")
    if local_cas.is_dir():
        shutil.copytree(local_cas, root / "usr/local/share/ca-certificates", dirs_exist_ok=True)
        subprocess.run(["chroot", str(root), "update-ca-certificates"], capture_output=True,
                       check=True)  # fmt: skip
    # A host where BuildKit is configured: the client role adds the CA to its config.
    (root / "etc/buildkit").mkdir(parents=True)
    (root / "etc/buildkit/buildkitd.toml").write_text("debug = false\n")
    mounted: list[Path] = []
    try:
        for fs in ("proc", "sys", "dev"):
            target = root / fs
            subprocess.run(["mount", "--rbind", f"/{fs}", str(target)], check=True)
            subprocess.run(["mount", "--make-rslave", str(target)], check=True)
            mounted.append(target)
        yield root
    finally:
        for target in reversed(mounted):
            subprocess.run(["umount", "--recursive", "--lazy", str(target)], check=False)


def _playbook(root: Path, tmp: Path) -> subprocess.CompletedProcess[str]:
    inventory = tmp / "inventory.ini"
    inventory.write_text(
        f"[regcache_gateway]\ndebian ansible_host={root}"
        " ansible_connection=community.general.chroot\n"
        "[regcache_clients]\ndebian\n"
    )
    ca = tmp / "regcache-ca.crt"
    source = tmp / "source"  # a snapshot: both runs install exactly the same tree
    if not source.exists():
        source.mkdir()
        for name in ("pyproject.toml", "README.md", "config.example.yaml"):
            shutil.copy(REPO / name, source / name)
        for name in ("systemd", "appliance"):
            skip = shutil.ignore_patterns("__pycache__")
            shutil.copytree(REPO / name, source / name, ignore=skip)
    return _run(
        str(BIN / "ansible-playbook"), "-i", str(inventory), "site.yml",
        "-e", f"regcache_appliance_ipv4={GATEWAY}", "-e", f"regcache_client_gateway={GATEWAY}",
        "-e", '{"regcache_start": false}', "-e", f"regcache_ca_fetch_dest={ca}",
        "-e", f"regcache_client_ca_src={ca}", "-e", f"regcache_source={source}",
    )  # fmt: skip


def _owner(root: Path, path: str) -> tuple[str, str, str]:
    """(user, group, octal mode) of `path` inside `root`, names from the root's own files."""
    st = (root / path.lstrip("/")).stat()
    users = {int(f[2]): f[0] for f in (line.split(":") for line in
             (root / "etc/passwd").read_text().splitlines())}  # fmt: skip
    groups = {int(f[2]): f[0] for f in (line.split(":") for line in
              (root / "etc/group").read_text().splitlines())}  # fmt: skip
    return users[st.st_uid], groups[st.st_gid], oct(st.st_mode & 0o7777)


def test_roles_install_gateway_and_client_idempotently(debian_root: Path, tmp_path: Path) -> None:
    root = debian_root
    first = _playbook(root, tmp_path)
    assert first.returncode == 0, first.stdout[-6000:] + first.stderr[-3000:]
    # The gateway.
    assert _owner(root, "/etc/regcache/config.yaml") == ("root", "regcache", "0o640")
    assert _owner(root, "/etc/regcache") == ("root", "regcache", "0o750")
    assert _owner(root, "/var/lib/regcache") == ("regcache", "regcache", "0o700")
    assert _owner(root, "/var/lib/regcache/ca/ca.key") == ("regcache", "regcache", "0o600")
    assert "regcache:" in (root / "etc/passwd").read_text()
    check = subprocess.run(
        ["chroot", str(root), "/opt/regcache/bin/regcache", "check-config",
         "/etc/regcache/config.yaml"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert check.returncode == 0 and ": ok (8 registries" in check.stdout, check.stderr
    unit = root / "etc/systemd/system/regcache.service"
    assert filecmp.cmp(unit, REPO / "systemd/regcache.service", shallow=False)
    wants = root / "etc/systemd/system/multi-user.target.wants/regcache.service"
    assert wants.is_symlink() and os.readlink(wants) == "/etc/systemd/system/regcache.service"
    fetched = tmp_path / "regcache-ca.crt"
    assert fetched.read_bytes() == (root / "var/lib/regcache/ca/ca.crt").read_bytes()
    # The client.
    assert _owner(root, "/usr/local/share/ca-certificates/regcache.crt") == (
        "root",
        "root",
        "0o644",
    )
    pem = fetched.read_text().strip()
    assert pem in (root / "etc/ssl/certs/ca-certificates.crt").read_text()
    for folder in ("etc/docker/certs.d", "etc/containers/certs.d"):
        for host in ("registry-1.docker.io", "ghcr.io", "quay.io"):
            assert (root / folder / host / "ca.crt").read_text().strip() == pem
    assert f"nameserver {GATEWAY}" in (root / "etc/resolv.conf").read_text()
    buildkit = (root / "etc/buildkit/buildkitd.toml").read_text()
    assert buildkit.startswith("debug = false\n") and '[registry."ghcr.io"]' in buildkit
    assert 'ca = ["/usr/local/share/ca-certificates/regcache.crt"]' in buildkit

    second = _playbook(root, tmp_path)
    assert second.returncode == 0, second.stdout[-6000:]
    recap = second.stdout[second.stdout.index("PLAY RECAP") :]
    assert "changed=0" in recap and "failed=0" in recap, recap
