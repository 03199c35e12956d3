"""`regcache serve` (lifecycle, start-up errors), `check-config` and `offline on|off`."""

from __future__ import annotations

import signal
from pathlib import Path

from tests.harness import free_port, write_config


def test_serve_logs_lifecycle_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    rc = write_config(tmp_path, dns={"upstreams": [f"127.0.0.1:{free_port()}"]})
    rc.start()
    assert rc.proc is not None
    rc.proc.send_signal(signal.SIGTERM)
    assert rc.proc.wait(timeout=10) == 0
    rc.proc = None
    log = rc.log()
    for line in ("ca created", "dns listening", "https listening", "regcache ready",
                 "regcache stopping reason=signal", "regcache stopped"):  # fmt: skip
        assert line in log, line
    assert "Traceback" not in log


def test_a_taken_port_is_a_clear_startup_error(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_config(tmp_path / "a", dns={"upstreams": ["127.0.0.1:9"]})
    second = write_config(tmp_path / "b", dns={"upstreams": ["127.0.0.1:9"]})
    config = second.config_path.read_text().replace(str(second.dns_port), str(first.dns_port))
    second.config_path.write_text(config)
    first.start()
    try:
        out = second.cli("serve", check=False)
    finally:
        first.stop()
    assert out.returncode == 1
    assert (
        f"cannot listen for DNS on 127.0.0.1:{first.dns_port}: Address already in use" in out.stderr
    )
    assert "Traceback" not in out.stderr


def test_check_config_names_the_file_and_what_it_intercepts(tmp_path: Path) -> None:
    rc = write_config(tmp_path)
    out = rc.cli("check-config", str(rc.config_path))
    assert out.stdout.startswith(f"{rc.config_path}: ok (")
    assert "intercepted names)" in out.stdout
    rc.config_path.write_text(rc.config_path.read_text() + "no_such_key: 1\n")
    bad = rc.cli("check-config", str(rc.config_path), check=False)
    assert bad.returncode == 2 and "no_such_key" in bad.stderr


def test_offline_on_and_off_switch_the_flag_file_a_running_regcache_reads(
    tmp_path: Path,
) -> None:
    rc = write_config(tmp_path)
    flag = rc.state_dir / "offline"
    rc.state_dir.mkdir(parents=True)
    assert "offline on" in rc.cli("offline", "on").stdout and flag.exists()
    assert "offline off" in rc.cli("offline", "off").stdout and not flag.exists()
    assert rc.cli("offline", "off").returncode == 0  # already off: still fine
