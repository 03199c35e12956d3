"""Strict config loading: the shipped files load; bad ones name the dotted key and line."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from appliance.config.model import ConfigError, load_config, parse_config
from appliance.config.registries import Registries
from tests.harness import REGCACHE, REPO

BASE = """\
appliance:
  ipv4: 192.0.2.10
registries:
  - name: docker.io
    hosts: [registry-1.docker.io]
"""


def test_example_config_loads_with_every_registry() -> None:
    config = load_config(REPO / "config.example.yaml")
    names = [r.name for r in config.registries]
    assert names == [
        "docker.io", "ghcr.io", "quay.io", "gcr.io", "pkg.dev",
        "registry.k8s.io", "public.ecr.aws", "mcr.microsoft.com",
    ]  # fmt: skip
    hosts = Registries.of(config).intercepted
    for host in ("registry-1.docker.io", "index.docker.io", "auth.docker.io", "eu.gcr.io",
                 "europe-west1-docker.pkg.dev", "mcr.microsoft.com", "public.ecr.aws"):  # fmt: skip
        assert hosts.match(host), host
    assert not hosts.match("production.cloudflare.docker.com")  # CDN: followed, not intercepted


def test_dev_config_has_the_example_registries_and_local_state() -> None:
    dev, example = (
        yaml.safe_load((REPO / f).read_text()) for f in ("config.dev.yaml", "config.example.yaml")
    )
    assert dev["registries"] == example["registries"]
    config = load_config(REPO / "config.dev.yaml")
    assert config.state_dir == REPO / "var"
    assert all(
        e.port > 1024 and e.address.is_loopback for e in config.listen.dns + config.listen.https
    )


def test_defaults_fill_in_what_is_omitted(tmp_path: Path) -> None:
    config = parse_config(BASE, tmp_path / "c.yaml")
    assert config.dns.ttl_s == 60 and config.tls.name_constraints
    # the HTTPS port: open to everyone who can reach it, 256 connections per client
    assert [str(n) for n in config.tls.allow_clients] == ["0.0.0.0/0", "::/0"]
    assert config.tls.max_connections_per_client == 256
    assert config.tls.max_pending_per_client == 128  # before their TLS handshake is done
    assert str(config.listen.dns[0]) == "0.0.0.0:53"
    # exactly what is served
    assert Registries.of(config).permitted_domains == ("registry-1.docker.io",)


def test_default_ca_constraints_are_the_served_names_never_their_parents(
    tmp_path: Path,
) -> None:
    """`mcr.microsoft.com` must not give `microsoft.com`, nor an ECR host `amazonaws.com`."""
    text = BASE.replace(
        "    hosts: [registry-1.docker.io]\n",
        "    hosts: [registry-1.docker.io, index.docker.io]\n    auth_hosts: [auth.docker.io]\n"
        "  - name: mcr\n    hosts: [mcr.microsoft.com]\n"
        "  - name: ecr\n    hosts: [123456789012.dkr.ecr.eu-west-1.amazonaws.com]\n"
        "  - name: harbor\n    hosts: [harbor.corp.co.uk]\n"
        "  - name: gcr\n    hosts: [gcr.io, '*.gcr.io']\n",
    )
    config = parse_config(text, tmp_path / "c.yaml")
    assert Registries.of(config).permitted_domains == (
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com", "auth.docker.io", "gcr.io",
        "harbor.corp.co.uk", "index.docker.io", "mcr.microsoft.com", "registry-1.docker.io",
    )  # fmt: skip


def test_empty_sections_mean_defaults(tmp_path: Path) -> None:
    config = parse_config(BASE + "dns:\n  # ttl_s: 30\ntls:\nresolve:\n", tmp_path / "c.yaml")
    assert config.dns.ttl_s == 60 and config.tls.name_constraints and config.resolve == {}
    with pytest.raises(ConfigError, match=r"line 1: appliance\.ipv4: required key is missing"):
        parse_config(BASE.replace("  ipv4: 192.0.2.10\n", ""), tmp_path / "c.yaml")


def test_host_names_are_stored_normalised(tmp_path: Path) -> None:
    text = (
        BASE.replace("registry-1.docker.io", "Registry-1.Docker.IO.")
        + 'resolve: {GHCR.io: ["::1"]}\n'
    )
    config = parse_config(text, tmp_path / "c.yaml")
    assert config.registries[0].hosts == ("registry-1.docker.io",)
    assert list(config.resolve) == ["ghcr.io"]


# (YAML appended to or replacing BASE, dotted key, line, words in the message)
MALFORMED = [
    (
        "appliance:\n  ipv4: 192.0.2.10\n  ipv5: 1\n" + BASE.split("\n", 2)[2],
        "appliance.ipv5",
        3,
        "unknown key",
    ),
    (BASE + "dns:\n  ttl: 60\n", "dns.ttl", 7, "did you mean 'ttl_s'"),
    (BASE + "dns:\n  ttl_s: sixty\n", "dns.ttl_s", 7, "expected an integer"),
    (BASE + "dns:\n  ttl_s: 0\n", "dns.ttl_s", 7, "between 1 and 86400"),
    (BASE + "dns:\n  upstream_timeout_s: true\n", "dns.upstream_timeout_s", 7, "expected a number"),
    (BASE + "listen:\n  dns: ['127.0.0.1']\n", "listen.dns[0]", 7, "ADDRESS:PORT"),
    (BASE + "listen:\n  https: ['127.0.0.1:99999']\n", "listen.https[0]", 7, "1..65535"),
    (BASE + "listen:\n  dns: []\n", "listen.dns", 7, "must not be empty"),
    (BASE + "dns:\n  allow_clients: [10.0.0.1/8]\n", "dns.allow_clients[0]", 7, "CIDR"),
    (BASE + "tls:\n  allow_clients: [10.0.0.0/8, 10.0.0.1/8]\n", "tls.allow_clients[1]", 7, "CIDR"),
    (BASE + "tls:\n  allow_clients: []\n", "tls.allow_clients", 7, "must not be empty"),
    (
        BASE + "tls:\n  max_connections_per_client: 0\n",
        "tls.max_connections_per_client",
        7,
        "between 1 and 65536",
    ),
    (
        BASE + "tls:\n  max_pending_per_client: 1025\n",
        "tls.max_pending_per_client",
        7,
        "between 1 and 1024",
    ),
    (
        BASE + "tls:\n  max_connection_per_client: 10\n",
        "tls.max_connection_per_client",
        7,
        "did you mean 'max_connections_per_client'",
    ),
    (BASE.replace("192.0.2.10", "not-an-ip"), "appliance.ipv4", 2, "IPv4"),
    (
        BASE + "  - name: docker.io\n    hosts: [x.docker.io]\n",
        "registries[1].name",
        6,
        "duplicate registry",
    ),
    (BASE + "    auth_hosts: ['*']\n", "registries[0].auth_hosts[0]", 6, "wildcard"),
    (
        BASE + "  - name: k8s\n    hosts: [REGISTRY-1.docker.io.]\n",
        "registries[1].hosts[0]",
        7,
        "already listed",
    ),
    (BASE + "  - name: ip\n    hosts: [10.0.0.1]\n", "registries[1].hosts[0]", 7, "IP address"),
    (BASE + "  - name: nohosts\n", "registries[1].hosts", 6, "required key is missing"),
    ("registries: []\nappliance: {ipv4: 192.0.2.1}\n", "registries", 1, "must not be empty"),
    (BASE.split("registries:")[0], "registries", 1, "required key is missing"),
    (
        BASE + "tls:\n  permitted_domains: [docker.com]\n",
        "tls.permitted_domains",
        7,
        "outside every permitted",
    ),
    (BASE + "tls:\n  leaf_lifetime_days: 120\n", "tls.leaf_lifetime_days", 7, "between 1 and 89"),
    (BASE + "tls:\n  permitted_domains: [com]\n", "tls.permitted_domains[0]", 7, "single label"),
    (
        BASE + "tls:\n  permitted_domains:\n    - docker.io\n    - co.uk\n",
        "tls.permitted_domains[1]",
        9,
        "public suffix",
    ),
    (
        BASE + "  - name: s3\n    hosts: ['*.s3.amazonaws.com']\n",
        "registries[1].hosts[0]",
        7,
        "public suffix",
    ),
    (BASE + "log_level: LOUD\n", "log_level", 6, "must be one of"),
    (BASE + "dns:\n  ttl_s: 5\n  ttl_s: 6\n", "dns.ttl_s", 8, "duplicate key"),
    (
        BASE + "listen: {dns: ['0.0.0.0:53']}\ndns:\n  upstreams: ['127.0.0.1:53']\n",
        "dns.upstreams[0]",
        8,
        "forward to itself",
    ),
    (BASE + "resolve:\n  ghcr.io: [not-an-ip]\n", "resolve.ghcr.io[0]", 7, "does not appear to be"),
    (BASE + "state_dir: [a, b]\n", "state_dir", 6, "expected a single value"),
    (BASE + "dns: {ttl_s: 60\n", "", 7, "invalid YAML"),
    (
        BASE + "    credentials: {method: basic, username: u}\n",
        "registries[0].credentials",
        6,
        "needs 'username' and 'password'",
    ),
    (
        BASE + "    credentials: {method: static, token: {file: /t, env: T}}\n",
        "registries[0].credentials.token",
        6,
        "exactly one of",
    ),
    (BASE + "    credentials: {method: ldap}\n", "registries[0].credentials.method", 6, "one of"),
    (BASE + "store:\n  max_size: 50 apples\n", "store.max_size", 7, "expected a size like"),
    (BASE + "store:\n  min_free: 150%\n", "store.min_free", 7, "percentage in (0, 100]"),
    (
        BASE + "store:\n  high_watermark_pct: 80\n  low_watermark_pct: 90\n",
        "store.low_watermark_pct",
        8,
        "must be below store.high_watermark_pct",
    ),
]


@pytest.mark.parametrize(
    ("text", "key", "line", "words"), MALFORMED, ids=[m[1] or "yaml" for m in MALFORMED]
)
def test_malformed_config_names_key_and_line(
    tmp_path: Path, text: str, key: str, line: int, words: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert message.startswith(f"{path}, line {line}: {key or '<top level>'}: "), message
    assert words in message, message


def test_check_config_cli_exits_nonzero_with_the_message(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE + "dns:\n  ttl_s: -1\n")
    out = subprocess.run(
        [*REGCACHE, "check-config", str(bad)], capture_output=True, text=True, cwd=REPO
    )
    assert out.returncode == 2
    assert f"{bad}, line 7: dns.ttl_s: must be between" in out.stderr
    good = subprocess.run(
        [*REGCACHE, "check-config", str(REPO / "config.example.yaml")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert good.returncode == 0 and "ok (8 registries" in good.stdout


def test_unreadable_config_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(ConfigError, match="the file is empty"):
        load_config(tmp_path / "empty.yaml")


def test_relative_state_dir_is_taken_from_the_config_folder(tmp_path: Path) -> None:
    config = parse_config(BASE + "state_dir: var\n", tmp_path / "c.yaml")
    assert config.state_dir == tmp_path.resolve() / "var"
