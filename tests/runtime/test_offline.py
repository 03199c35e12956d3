"""Offline mode: by config, or by the flag file in the state folder."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from appliance.runtime.offline import OfflineSwitch, offline_flag
from tests.runtime.configs import config


def test_offline_by_config_is_offline_whatever_the_flag(tmp_path: Path) -> None:
    switch = OfflineSwitch(config(tmp_path, "offline: true\n"))
    assert switch() and switch.always


def test_the_flag_file_switches_offline_looked_at_at_most_once_a_second(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    settings = config(tmp_path)
    assert offline_flag(settings) == tmp_path / "state" / "offline"
    offline_flag(settings).parent.mkdir()
    switch = OfflineSwitch(settings)
    assert not switch()
    offline_flag(settings).touch()
    assert not switch()  # looked at less than a second ago
    fresh = OfflineSwitch(settings)
    assert fresh()
    assert "offline mode on" in caplog.text
    offline_flag(settings).unlink()
    assert fresh()  # until the next look
