"""Log a recurring problem once per interval, with how often it happened meanwhile.

An upstream outage turns every query into the same failure; one line per 30 s says so
without drowning the journal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class LogThrottle:
    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._clock = clock
        self._next: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: object) -> None:
        now = self._clock()
        if now < self._next.get(key, 0.0):
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._next[key] = now + self._interval_s
        suppressed = self._suppressed.pop(key, 0)
        self._logger.warning(message + " suppressed_since_last=%d", *args, suppressed)
