"""SIGHUP's reload: what it applies, and that an invalid file changes nothing."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from appliance.runtime.offline import OfflineSwitch
from appliance.runtime.signals import reload
from tests.runtime.configs import config

TEXT = (
    "appliance: {{ipv4: 192.0.2.1}}\nstate_dir: {state}\nlog_level: {level}\n"
    "offline: {offline}\nregistries:\n  - name: docker.io\n    hosts: [registry-1.docker.io]\n"
)


def test_a_reload_applies_the_log_level_and_offline_mode(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    switch = OfflineSwitch(config(tmp_path))
    path = tmp_path / "config.yaml"
    path.write_text(TEXT.format(state=tmp_path / "state", level="ERROR", offline="true"))
    root = logging.getLogger()
    before = root.level
    try:
        with caplog.at_level(logging.WARNING, logger="appliance.runtime.signals"):
            reload(path, switch)
        assert root.level == logging.ERROR and switch.always and switch()
        assert "config reloaded log_level=ERROR offline=True" in caplog.text
    finally:
        root.setLevel(before)


def test_an_invalid_config_changes_nothing_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    switch = OfflineSwitch(config(tmp_path))
    path = tmp_path / "config.yaml"
    path.write_text(TEXT.format(state=tmp_path / "state", level="LOUD", offline="true"))
    root = logging.getLogger()
    before = root.level
    with caplog.at_level(logging.ERROR, logger="appliance.runtime.signals"):
        reload(path, switch)
    assert root.level == before and not switch.always
    assert "config reload refused" in caplog.text and "log_level" in caplog.text
