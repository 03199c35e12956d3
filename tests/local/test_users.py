"""The local registry's users: bcrypt lines as `htpasswd -B` writes them, re-read when
the file changes, checked off the loop in a bounded pool, answers remembered."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from appliance.local import users as users_module
from appliance.local.ports import LocalError
from appliance.local.users import Htpasswd
from tests.local.conftest import Clock, line


def test_a_user_logs_in_with_the_bcrypt_password_and_nothing_else(users: Path) -> None:
    htpasswd = Htpasswd(users)
    assert htpasswd.configured
    assert htpasswd.check("alice", "wonder") and htpasswd.check("bob", "builder")
    assert not htpasswd.check("alice", "builder")
    assert not htpasswd.check("alice", "wonder ")
    assert not htpasswd.check("carol", "wonder")
    assert not Htpasswd(None).configured and not Htpasswd(None).check("alice", "wonder")


def test_a_changed_file_is_picked_up_after_the_recheck_interval(
    users: Path, lines: dict[str, str]
) -> None:
    clock = Clock(0.0)
    htpasswd = Htpasswd(users, clock)
    assert htpasswd.check("alice", "wonder")
    # alice's password changes (her line is another one), bob goes.
    users.write_text(lines["alice2"].replace("alice2:", "alice:") + "\n")
    clock.now = 1.0  # within the interval: the file is not looked at again
    assert htpasswd.check("alice", "wonder") and htpasswd.check("bob", "builder")
    clock.now = 2.5
    assert not htpasswd.check("alice", "wonder")  # the remembered check goes with the file
    assert htpasswd.check("alice", "changed")
    assert not htpasswd.check("bob", "builder")


def test_an_unreadable_file_keeps_the_users_known_so_far(users: Path) -> None:
    clock = Clock(0.0)
    htpasswd = Htpasswd(users, clock)
    assert htpasswd.check("bob", "builder")
    users.unlink()
    clock.now = 10.0
    assert htpasswd.check("bob", "builder")


def test_a_user_whose_hash_is_not_bcrypt_cannot_log_in(
    tmp_path: Path, lines: dict[str, str]
) -> None:
    path = tmp_path / "htpasswd"
    md5 = subprocess.run(["htpasswd", "-nbm", "carol", "pw"], capture_output=True, text=True,
                         check=True).stdout.strip()  # fmt: skip
    path.write_text(f"{md5}\ndave:{{SHA}}GpHWL3ymc5liWkNopqtdSjuqYHM=\nerin:pw\n{lines['bob']}\n")
    htpasswd = Htpasswd(path)
    assert not htpasswd.check("carol", "pw")
    assert not htpasswd.check("dave", "pw")
    assert not htpasswd.check("erin", "pw")  # a plain-text "hash" is no password either
    assert htpasswd.check("bob", "builder")  # the others' lines still count


def test_comment_and_blank_lines_are_ignored(tmp_path: Path, lines: dict[str, str]) -> None:
    path = tmp_path / "htpasswd"
    path.write_text(f"# {lines['alice']}\n#{lines['alice']}\n\n   \n{lines['bob']}\n")
    htpasswd = Htpasswd(path)
    assert not htpasswd.check("alice", "wonder")
    assert not htpasswd.check("# alice", "wonder") and not htpasswd.check("#alice", "wonder")
    assert htpasswd.check("bob", "builder")


def test_a_password_past_72_bytes_logs_in_as_htpasswd_cut_it(tmp_path: Path) -> None:
    long = "x" * 100
    path = tmp_path / "htpasswd"
    path.write_text(line("carol", long) + "\n")
    htpasswd = Htpasswd(path)
    assert htpasswd.check("carol", long)
    assert htpasswd.check("carol", "x" * 72 + "anything")  # bcrypt reads 72 bytes
    assert not htpasswd.check("carol", "x" * 71)


def test_a_wrong_password_repeated_costs_one_bcrypt_run(
    users: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs: list[str] = []
    real = users_module.bcrypt.checkpw

    def counted(secret: bytes, hashed: bytes) -> bool:
        runs.append(secret.decode())
        return bool(real(secret, hashed))

    monkeypatch.setattr(users_module.bcrypt, "checkpw", counted)
    htpasswd = Htpasswd(users, Clock(0.0))
    for _ in range(5):
        assert not htpasswd.check("alice", "guess")
        assert not htpasswd.check("nobody", "guess")  # an unknown user costs a run too
    assert runs == ["guess", "guess"]


async def test_checks_wait_in_a_bounded_pool_and_a_flood_beyond_it_is_refused(
    users: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow(secret: bytes, hashed: bytes) -> bool:
        asyncio.run_coroutine_threadsafe(gate.wait(), loop).result(timeout=10)
        return False

    monkeypatch.setattr(users_module.bcrypt, "checkpw", slow)
    htpasswd = Htpasswd(users)
    waiting = [asyncio.ensure_future(htpasswd.verify("alice", f"p{n}")) for n in range(32)]
    await asyncio.sleep(0.05)
    with pytest.raises(LocalError) as caught:
        await htpasswd.verify("alice", "one too many")
    assert caught.value.status == 429
    gate.set()
    assert await asyncio.gather(*waiting) == [False] * 32
    assert await htpasswd.verify("bob", "builder") is False  # still refused: slow says so
