"""The `regcache` command as a whole: its groups, where `--config` may go, config errors."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.harness import REGCACHE, REPO, write_config


def test_config_option_is_accepted_after_the_subcommand(tmp_path: Path) -> None:
    rc = write_config(tmp_path)
    out = subprocess.run(
        [*REGCACHE, "ca", "init", "--config", str(rc.config_path)],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0 and (rc.state_dir / "ca" / "ca.crt").exists(), out.stderr


def test_help_lists_every_command_group() -> None:
    out = subprocess.run([*REGCACHE, "--help"], capture_output=True, text=True, timeout=60)
    for command in ("serve", "check-config", "offline", "ca", "cache", "mirror", "status",
                    "audit", "doctor"):  # fmt: skip
        assert f"    {command} " in out.stdout, command


def test_a_config_error_exits_2_naming_the_key(tmp_path: Path) -> None:
    rc = write_config(tmp_path)
    rc.config_path.write_text(
        rc.config_path.read_text().replace("log_level: INFO", "log_level: LOUD")
    )
    out = rc.cli("ca", "show", check=False)
    assert out.returncode == 2
    assert out.stderr.startswith("regcache: config error:") and "log_level" in out.stderr
