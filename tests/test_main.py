"""`regcache serve` start-up and supervision: config mistakes exit 1 at once, a dying
background task stops the process instead of vanishing."""

from __future__ import annotations

import asyncio
import gc
import logging
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance import main
from appliance.config.model import load_config
from tests.harness import REGCACHE, REPO, Regcache, free_port, write_config

DEADLINE_S = 30.0  # start-up takes well under a second; a hang never ends


def serve_until_exit(rc: Regcache) -> tuple[int, str, float]:
    """Run `regcache serve`; (exit code, stderr, seconds), failing if it does not exit."""
    started = time.monotonic()
    proc = subprocess.Popen(
        [*REGCACHE, "--config", str(rc.config_path), "serve"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, stderr = proc.communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"regcache serve still running {DEADLINE_S:.0f} s after a config mistake")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return proc.returncode, stderr, time.monotonic() - started


def assert_clear_failure(rc: Regcache, *named: str) -> None:
    code, stderr, _ = serve_until_exit(rc)
    assert code == 1, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("regcache: "), stderr
    for text in named:
        assert text in last, stderr
    assert "Traceback" not in stderr


def test_a_missing_admin_token_file_exits_1_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "admin-token"
    rc = write_config(
        tmp_path, admin={"listen": [f"127.0.0.1:{free_port()}"], "token": {"file": str(missing)}}
    )
    assert_clear_failure(rc, "admin.token", str(missing))


def test_an_unreadable_upstream_ca_bundle_exits_1_naming_it(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_text("not a certificate\n")
    rc = write_config(tmp_path, upstream={"ca_bundle": str(bundle)})
    assert_clear_failure(rc, "upstream.ca_bundle", str(bundle))


def test_an_unwritable_audit_path_exits_1_naming_it(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    audit = tmp_path / "a-file" / "audit.jsonl"  # its folder is a file: even root cannot
    rc = write_config(tmp_path, audit={"path": str(audit)})
    assert_clear_failure(rc, "audit.path", str(audit))


async def test_a_background_task_that_dies_stops_regcache_with_exit_status_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(_metrics: object) -> None:
        raise RuntimeError("sampling bug")

    monkeypatch.setattr(main, "_sample_savings", broken)
    rc = write_config(tmp_path)
    caplog.set_level(logging.INFO)
    async with asyncio.timeout(20):
        assert await main.run(main.build(load_config(rc.config_path), rc.config_path)) == 1
    assert "regcache ready" in caplog.text
    assert "regcache stopping reason=task-failed task=savings-history" in caplog.text
    assert "RuntimeError: sampling bug" in caplog.text and "regcache stopped" in caplog.text


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    """`run` freezes the objects start-up made; in this test process, undo that after."""
    yield
    gc.unfreeze()


async def test_what_start_up_made_is_frozen_out_of_the_collectors_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def stop_at_once(_metrics: object) -> None:
        raise RuntimeError("stop")

    monkeypatch.setattr(main, "_sample_savings", stop_at_once)
    rc = write_config(tmp_path)
    gc.unfreeze()
    async with asyncio.timeout(20):
        assert await main.run(main.build(load_config(rc.config_path), rc.config_path)) == 1
    assert gc.get_freeze_count() > 0
