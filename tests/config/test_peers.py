"""`peers`: this gateway must be a member, each member listed once, endpoints written
ADDRESS:PORT; a bad value is refused naming its key and line."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

import pytest

from appliance.config.model import ConfigError, parse_config
from tests.harness import REPO

BASE = """\
appliance: {ipv4: 10.0.0.1}
registries: [{name: hub, hosts: [registry-1.docker.io]}]
peers:
"""


def parse(lines: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    return parse_config(BASE + lines, tmp_path / "config.yaml")


def test_a_full_section_is_taken(tmp_path: Path) -> None:
    peers = parse(
        "  members: ['10.0.0.2:443', '10.0.0.1:443', '[fd00::3]:8443']\n"
        "  ca_bundle: /etc/regcache/site-ca.pem\n"
        "  probe_interval_s: 10\n",
        tmp_path,
    ).peers
    assert peers is not None
    assert [str(m) for m in peers.members] == ["10.0.0.2:443", "10.0.0.1:443", "[fd00::3]:8443"]
    assert peers.ca_bundle == Path("/etc/regcache/site-ca.pem")
    assert peers.probe_interval_s == 10 and peers.connect_timeout_s == 2.0
    assert peers.self_index((IPv4Address("10.0.0.1"),)) == 1
    assert peers.self_index((IPv4Address("10.0.0.9"),)) is None


def test_no_section_means_no_peers(tmp_path: Path) -> None:
    config = parse_config(BASE.removesuffix("peers:\n"), tmp_path / "config.yaml")
    assert config.peers is None


@pytest.mark.parametrize(
    ("lines", "key", "message"),
    [
        ("  members: ['10.0.0.2:443', '10.0.0.3:443']\n", "peers.members",
         "must list this gateway too (appliance address 10.0.0.1)"),
        ("  members: ['10.0.0.1:443', '10.0.0.2:443', '10.0.0.2:8443']\n", "peers.members[2]",
         "10.0.0.2 is listed twice"),
        ("  members: ['10.0.0.1']\n", "peers.members[0]", "ADDRESS:PORT"),
        ("  members: []\n", "peers.members", "empty"),
        ("  members: ['10.0.0.1:443']\n  probe_interval_s: 0\n", "peers.probe_interval_s",
         "between"),
        ("  member: ['10.0.0.1:443']\n", "peers.member", "unknown"),
    ],
)  # fmt: skip
def test_a_bad_value_names_its_key_and_line(
    lines: str, key: str, message: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as e:
        parse(lines, tmp_path)
    assert f": {key}: " in str(e.value) and message in str(e.value)
    assert ", line " in str(e.value)


def test_the_examples_commented_block_is_valid(tmp_path: Path) -> None:
    text = (REPO / "config.example.yaml").read_text()
    block = text[text.index("# peers:") :].split("\n\n")[0]
    uncommented = "\n".join(line.removeprefix("# ") for line in block.splitlines())
    config = parse_config(text.replace(block, uncommented), tmp_path / "config.yaml")
    assert config.peers is not None and len(config.peers.members) == 2
    assert config.peers.ca_bundle == Path("/etc/regcache/site-ca.pem")
