"""`regcache client-config`: each runtime's snippet parses as that runtime's format and
names the mirror the way that runtime reaches one (the pulls themselves are in
e2e/test_mirror_mode.py)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest

from appliance.cli import main

CONFIG = """\
appliance: {ipv4: 192.0.2.10}
listen: {https: ["0.0.0.0:443"]}
registries:
  - name: docker.io
    hosts: [registry-1.docker.io, index.docker.io]
  - name: ghcr.io
    hosts: [ghcr.io]
  - name: k8s
    hosts: ["*.pkg.dev"]
mirror_mode: {names: [regcache.build.internal], listen: ["0.0.0.0:5443"]}
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    return path


def _written(config: Path, runtime: str, out: Path, *extra: str) -> dict[str, str]:
    assert main(["client-config", runtime, "--config", str(config), "--out", str(out),
                 *extra]) == 0  # fmt: skip
    return {str(p.relative_to(out)): p.read_text() for p in out.rglob("*") if p.is_file()}


def test_containerd_gets_a_hosts_toml_per_registry_with_the_mirror_first(
    config: Path, tmp_path: Path
) -> None:
    files = _written(config, "containerd", tmp_path / "certs.d", "--ca", "/etc/regcache/ca.crt")
    assert sorted(files) == ["docker.io/hosts.toml", "ghcr.io/hosts.toml"]  # no wildcard
    hub = tomllib.loads(files["docker.io/hosts.toml"])
    assert hub["server"] == "https://registry-1.docker.io"
    assert hub["host"] == {"https://regcache.build.internal:5443": {
        "capabilities": ["pull", "resolve"], "ca": "/etc/regcache/ca.crt"}}  # fmt: skip
    assert tomllib.loads(files["ghcr.io/hosts.toml"])["server"] == "https://ghcr.io"


def test_docker_podman_and_buildkit_snippets_parse_and_name_the_mirror(
    config: Path, tmp_path: Path
) -> None:
    docker = _written(config, "docker", tmp_path / "docker")
    assert json.loads(docker["daemon.json"]) == {
        "registry-mirrors": ["https://regcache.build.internal:5443"]}  # fmt: skip
    podman = tomllib.loads(_written(config, "podman", tmp_path / "podman")["50-regcache.conf"])
    assert [(r["prefix"], r["location"], r["mirror"]) for r in podman["registry"]] == [
        ("docker.io", "docker.io", [{"location": "regcache.build.internal:5443/docker.io"}]),
        ("ghcr.io", "ghcr.io", [{"location": "regcache.build.internal:5443/ghcr.io"}]),
    ]
    buildkit = _written(config, "buildkit", tmp_path / "bk", "--ca", "/etc/regcache/ca.crt")
    parsed = tomllib.loads(buildkit["buildkitd.toml"])["registry"]
    assert parsed["docker.io"] == {"mirrors": ["regcache.build.internal:5443"]}
    assert parsed["regcache.build.internal:5443"] == {"ca": ["/etc/regcache/ca.crt"]}


def test_printed_files_are_headed_by_where_they_go(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["client-config", "containerd", "--config", str(config), "--gateway", "10.0.0.1",
            "--registry", "index.docker.io", "--registry", "quay.io"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "# file: /etc/containerd/certs.d/docker.io/hosts.toml\n" in out
    assert "# file: /etc/containerd/certs.d/quay.io/hosts.toml\n" in out
    assert '[host."https://10.0.0.1"]' in out and "ghcr.io" not in out


def test_a_build_host_without_config_needs_a_gateway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("REGCACHE_CONFIG", str(tmp_path / "absent.yaml"))
    assert main(["client-config", "docker"]) == 2
    assert "needs --gateway" in capsys.readouterr().err
    assert main(["client-config", "podman", "--gateway", "gw.example"]) == 0
    assert 'location = "gw.example/quay.io"' in capsys.readouterr().out  # the public defaults


def test_mirror_mode_off_in_the_config_is_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.split("mirror_mode")[0])
    assert main(["client-config", "containerd", "--config", str(path)]) == 2
    assert "mirror mode is off" in capsys.readouterr().err
