"""Offline mode: by config, or switched at run time by a flag file in the state folder."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from appliance.config.model import Config

log = logging.getLogger(__name__)


def offline_flag(config: Config) -> Path:
    """The file `regcache offline on` creates: its presence means offline."""
    return config.state_dir / "offline"


class OfflineSwitch:
    """Offline by config, or by the flag file (checked at most once a second)."""

    def __init__(self, config: Config) -> None:
        self.always = config.offline
        self._flag = offline_flag(config)
        self._checked = 0.0
        self._value = False

    def __call__(self) -> bool:
        if self.always:
            return True
        now = time.monotonic()
        if now - self._checked >= 1.0:
            self._checked = now
            value = self._flag.exists()
            if value != self._value:
                log.warning("offline mode %s", "on" if value else "off")
            self._value = value
        return self._value
