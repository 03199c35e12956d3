"""What the local registry's tests share: a clock to move, and htpasswd lines."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def line(user: str, password: str) -> str:
    out = subprocess.run(["htpasswd", "-nbB", user, password], capture_output=True,
                         text=True, check=True)  # fmt: skip
    return out.stdout.strip()


@pytest.fixture(scope="module")
def lines() -> dict[str, str]:
    """bcrypt lines as `htpasswd -B` writes them (made once: bcrypt is slow on purpose)."""
    return {u: line(u, p) for u, p in (("alice", "wonder"), ("bob", "builder"),
                                       ("alice2", "changed"))}  # fmt: skip


@pytest.fixture
def users(tmp_path: Path, lines: dict[str, str]) -> Path:
    path = tmp_path / "htpasswd"
    path.write_text(f"{lines['alice']}\n{lines['bob']}\n")
    return path
