"""`regcache audit` (filters over the audit log) and `regcache status` (the admin listener)."""

from __future__ import annotations

import json
from pathlib import Path

from appliance.admin.audit import AuditLog
from tests.harness import Regcache, write_config

ENTRIES = [
    {"time": "2026-12-01T10:00:00.000+00:00", "client": "10.0.0.7", "registry": "ghcr.io",
     "repository": "org/app", "reference": "1.0", "digest": "sha256:" + "a" * 64},
    {"time": "2026-12-02T10:00:00.000+00:00", "client": "10.0.0.8", "registry": "ghcr.io",
     "repository": "org/app", "reference": "sha256:" + "b" * 64, "digest": "sha256:" + "b" * 64},
    {"time": "2026-12-03T10:00:00.000+00:00", "client": "10.0.0.7", "registry": "quay.io",
     "repository": "org/app", "reference": "2.0", "digest": "sha256:" + "c" * 64},
]  # fmt: skip


def _audited(tmp_path: Path) -> Regcache:
    """A config whose audit log holds ENTRIES, written by the real writer."""
    rc = write_config(tmp_path, audit={"enabled": True, "path": str(tmp_path / "audit.jsonl")})
    log = AuditLog(tmp_path / "audit.jsonl", max_bytes=1 << 20, keep=1)
    for entry in ENTRIES:
        log.write(entry)
    log.close()
    return rc


def _days(rc: Regcache, *args: str) -> list[str]:
    out = rc.cli("audit", "--json", *args)
    return [json.loads(line)["time"][:10] for line in out.stdout.splitlines()]


def test_audit_filters_by_client_image_and_time(tmp_path: Path) -> None:
    rc = _audited(tmp_path)
    assert _days(rc) == ["2026-12-01", "2026-12-02", "2026-12-03"]
    assert _days(rc, "--client", "10.0.0.7") == ["2026-12-01", "2026-12-03"]
    assert _days(rc, "--image", "ghcr.io/org/app:1.0") == ["2026-12-01"]
    assert _days(rc, "--image", "ghcr.io/org/app@sha256:" + "b" * 64) == ["2026-12-02"]
    assert _days(rc, "--since", "2026-12-02T00:00:00Z", "--until", "2026-12-02T23:00Z") == [
        "2026-12-02"
    ]


def test_audit_prints_a_table_and_refuses_a_bad_time(tmp_path: Path) -> None:
    rc = _audited(tmp_path)
    table = rc.cli("audit").stdout.splitlines()
    assert table[0].startswith("TIME (UTC)") and len(table) == 1 + len(ENTRIES)
    bad = rc.cli("audit", "--since", "yesterday", check=False)
    assert bad.returncode == 2 and "expected an ISO time or an age" in bad.stderr


def test_status_without_an_admin_listener_says_so(tmp_path: Path) -> None:
    rc = write_config(tmp_path, admin={"listen": []})
    out = rc.cli("status", check=False)
    assert out.returncode == 2 and "admin.listen is empty" in out.stderr


def test_status_of_a_regcache_not_running_is_a_clear_error(tmp_path: Path) -> None:
    rc = write_config(tmp_path)
    out = rc.cli("status", check=False)
    assert out.returncode == 1 and "is regcache running?" in out.stderr
