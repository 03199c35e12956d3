"""The Ansible roles pass ansible-lint and a syntax check. They are run for real, over
SSH into machines that boot systemd, by tests/deploy/test_booted.py."""

from __future__ import annotations

import os
import subprocess
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
