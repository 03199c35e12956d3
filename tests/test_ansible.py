"""The Ansible roles pass ansible-lint and a syntax check. They are run for real, over
SSH into machines that boot systemd, by tests/deploy/test_booted.py."""

from __future__ import annotations

import os
import subprocess
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ANSIBLE = REPO / "ansible"
BIN = REPO / ".venv" / "bin"


def _run(*argv: str, cwd: Path = ANSIBLE, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"}
    return subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def test_roles_pass_ansible_lint_and_syntax_check() -> None:
    lint = _run(str(BIN / "ansible-lint"), "--offline", "--nocolor")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "criteria was 'production'" in lint.stdout + lint.stderr
    syntax = _run(str(BIN / "ansible-playbook"), "--syntax-check", "site.yml")
    assert syntax.returncode == 0, syntax.stdout + syntax.stderr


def test_the_packed_wheelhouse_depends_only_on_the_wheels(tmp_path: Path) -> None:
    """The role copies the wheelhouse as one tar, and only when it changed: packing the same
    wheels again (touched, another order on disk) gives the same bytes; a symlinked wheel
    travels as the file it points to; another wheel changes the tar."""
    pack = str(ANSIBLE / "roles/regcache/files/pack_wheelhouse.py")
    house, elsewhere = tmp_path / "house", tmp_path / "elsewhere"
    house.mkdir()
    elsewhere.mkdir()
    (house / "b-1.0-py3-none-any.whl").write_bytes(b"b" * 1000)
    (elsewhere / "a-1.0-py3-none-any.whl").write_bytes(b"a" * 500)
    (house / "a-1.0-py3-none-any.whl").symlink_to(elsewhere / "a-1.0-py3-none-any.whl")
    first, second, third = (tmp_path / f"{n}.tar" for n in ("first", "second", "third"))
    assert _run(str(BIN / "python"), pack, str(house), str(first)).returncode == 0
    os.utime(house / "b-1.0-py3-none-any.whl", (1, 1))
    assert _run(str(BIN / "python"), pack, str(house), str(second)).returncode == 0
    assert first.read_bytes() == second.read_bytes()
    with tarfile.open(first) as tar:
        members = {m.name: (m.isfile(), m.size, m.mtime) for m in tar.getmembers()}
    assert members == {
        "a-1.0-py3-none-any.whl": (True, 500, 315532800),
        "b-1.0-py3-none-any.whl": (True, 1000, 315532800),
    }
    (house / "c-1.0-py3-none-any.whl").write_bytes(b"c")
    assert _run(str(BIN / "python"), pack, str(house), str(third)).returncode == 0
    assert third.read_bytes() != first.read_bytes()
