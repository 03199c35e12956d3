"""The audit log's writer (a queue-fed thread) and reader, on real files."""

from __future__ import annotations

from pathlib import Path

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
