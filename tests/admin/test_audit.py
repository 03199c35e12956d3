"""The audit log's writer (a queue-fed thread) and reader, on real files."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from appliance.admin.audit import AuditLog, read


def test_entries_rotate_by_size_and_read_back_oldest_first(tmp_path: Path) -> None:
    path = tmp_path / "audit" / "audit.jsonl"
    log = AuditLog(path, max_bytes=2000, keep=3)
    for i in range(100):
        log.write({"n": i, "digest": "sha256:" + "a" * 64})
    log.close()  # drains the queue
    rotated = sorted(p.name for p in path.parent.iterdir())
    assert rotated == ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2", "audit.jsonl.3"]
    assert all(p.stat().st_size <= 2000 for p in path.parent.iterdir())
    numbers = [entry["n"] for entry in read(path)]
    assert numbers == sorted(numbers) and numbers[-1] == 99  # oldest dropped, order kept
    assert len(numbers) < 100


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text('{"n": 1}\n{"n": 2}\n{"n": 3, "dig')
    assert [e["n"] for e in read(path)] == [1, 2]


def test_a_full_disk_drops_lines_with_one_log_line_not_a_traceback_each(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "audit.jsonl"
    path.symlink_to("/dev/full")  # every write fails with ENOSPC, as on a full disk
    audit = AuditLog(path, max_bytes=1 << 20, keep=3)
    for i in range(200):
        audit.write({"n": i, "digest": "sha256:" + "a" * 64})
    audit.close()  # drains the queue; the last lines cannot be flushed either
    assert "Logging error" not in capfd.readouterr().err
    failed = [r for r in caplog.records if "audit write-failed" in r.getMessage()]
    assert 1 <= len(failed) <= 2 and all(r.levelno == logging.WARNING for r in failed)
    assert "No space left on device" in failed[0].getMessage()
