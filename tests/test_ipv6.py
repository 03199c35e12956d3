"""Both listeners on IPv6 loopback next to IPv4, as on a dual-stack gateway."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from tests.harness import dig, running, write_config


def test_dns_and_https_answer_on_ipv6(tmp_path: Path) -> None:
    rc = write_config(
        tmp_path,
        appliance={"ipv4": "192.0.2.1", "ipv6": "2001:db8::1"},
        dns={"upstreams": ["127.0.0.1:9"]},
    )
    config = yaml.safe_load(rc.config_path.read_text())
    config["listen"]["dns"].append(f"[::1]:{rc.dns_port}")
    config["listen"]["https"].append(f"[::1]:{rc.https_port}")
    rc.config_path.write_text(yaml.safe_dump(config))
    with running(rc):
        out = dig("-6", "@::1", "-p", str(rc.dns_port), "+short", "ghcr.io", "AAAA")
        assert out.strip() == "2001:db8::1", out
        out = dig("@127.0.0.1", "-p", str(rc.dns_port), "+short", "ghcr.io", "A")
        assert out.strip() == "192.0.2.1", out
        ca = tmp_path / "ca.pem"
        rc.cli("ca", "export", "--out", str(ca))
        got = subprocess.run(
            ["curl", "-sS", "--max-time", "10", "--cacert", str(ca), "--resolve",
             f"ghcr.io:{rc.https_port}:[::1]", f"https://ghcr.io:{rc.https_port}/v2/"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        # TLS verified and HTTP answered (upstream is unreachable here: regcache answers the ping).
        assert got.returncode == 0 and got.stdout == "{}", got.stderr
        assert f"https listening endpoint=[::1]:{rc.https_port}" in rc.log()
