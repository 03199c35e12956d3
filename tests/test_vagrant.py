"""The Vagrant lab's Vagrantfile validates (`vagrant validate --ignore-provider`: no
provider is installed; make test installs vagrant without its recommended libvirt)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _validate(folder: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "VAGRANT_CWD": str(folder), "VAGRANT_HOME": str(folder / ".home")}
    return subprocess.run(
        ["vagrant", "validate", "--ignore-provider"],
        capture_output=True, text=True, env=env, timeout=300, check=False,
    )  # fmt: skip


def test_vagrantfile_validates_and_a_broken_one_does_not(tmp_path: Path) -> None:
    if shutil.which("vagrant") is None:
        pytest.skip("vagrant is not installed (make test installs it when run as root)")
    good = tmp_path / "good"
    good.mkdir()
    shutil.copy(REPO / "Vagrantfile", good / "Vagrantfile")
    out = _validate(good)
    assert out.returncode == 0 and "validated successfully" in out.stdout, out.stdout + out.stderr
    text = (REPO / "Vagrantfile").read_text()
    assert 'ansible.playbook = "ansible/site.yml"' in text and '"regcache_clients"' in text
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "Vagrantfile").write_text(text.replace("client.vm.network", "client.vm.netwrok"))
    assert _validate(broken).returncode != 0
