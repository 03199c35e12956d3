"""The systemd unit: it verifies, it is locked down, and readiness means ready."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.harness import REGCACHE, REPO, dig, write_config

UNIT = REPO / "systemd" / "regcache.service"

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def local_unit(tmp_path: Path) -> Path:
    """The unit with this checkout's regcache where the package would be installed
    (verify checks that the commands exist)."""
    unit = tmp_path / "regcache.service"
    unit.write_text(
        UNIT.read_text().replace("/opt/regcache/bin/regcache", str(REPO / ".venv/bin/regcache"))
    )
    return unit


@needs_systemd_analyze
def test_unit_verifies(tmp_path: Path) -> None:
    out = subprocess.run(["systemd-analyze", "verify", str(local_unit(tmp_path))],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr


@needs_systemd_analyze
def test_unit_exposure_is_at_most_2_5(tmp_path: Path) -> None:
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(local_unit(tmp_path))],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    match = re.search(r"Overall exposure level for regcache.service: ([\d.]+)", out.stdout)
    assert match is not None, out.stdout + out.stderr
    assert float(match.group(1)) <= 2.5, out.stdout


def test_unit_grants_only_the_port_binding_capability() -> None:
    text = UNIT.read_text()
    assert "CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n" in text
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE\n" in text
    assert "Type=notify" in text and "ExecReload=" in text and "Restart=on-failure" in text


def test_ready_is_sent_only_once_dns_and_https_answer(tmp_path: Path) -> None:
    sock_path = tmp_path / "notify.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(sock_path))
    receiver.settimeout(20)
    rc = write_config(tmp_path)
    env = {**os.environ, "NOTIFY_SOCKET": str(sock_path)}
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([*REGCACHE, "--config", str(rc.config_path), "serve"], cwd=REPO,
                            env=env, stderr=log)  # fmt: skip
    try:
        message = receiver.recv(4096).decode()
        assert "READY=1" in message
        # Ready means both listeners answer at once.
        assert "127.0.0.1" in dig("@127.0.0.1", "-p", str(rc.dns_port), "+short", "ghcr.io")
        with socket.create_connection(("127.0.0.1", rc.https_port), timeout=5):
            pass
        # SIGHUP: a valid change that is safe at run time is applied, without a restart.
        config = yaml.safe_load(rc.config_path.read_text())
        config["offline"] = True
        rc.config_path.write_text(yaml.safe_dump(config))
        proc.send_signal(signal.SIGHUP)
        assert "RELOADING=1" in receiver.recv(4096).decode()
        assert "READY=1" in receiver.recv(4096).decode()
        rc.config_path.write_text("dns: [broken")  # an invalid file changes nothing
        proc.send_signal(signal.SIGHUP)
        assert "RELOADING=1" in receiver.recv(4096).decode()
        assert "READY=1" in receiver.recv(4096).decode()
        assert "127.0.0.1" in dig("@127.0.0.1", "-p", str(rc.dns_port), "+short", "ghcr.io")
        proc.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in receiver.recv(4096).decode()
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        receiver.close()
        log.close()
    text = (tmp_path / "serve.log").read_text()
    assert "config reloaded log_level=INFO offline=True" in text
    assert "config reload refused" in text
