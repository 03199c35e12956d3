"""Log a recurring problem once per interval, with how often it happened meanwhile.

An upstream outage turns every query into the same failure; one line per 30 s says so
without drowning the journal. Keys often carry client-chosen parts (a repository name):
at most `max_keys` are tracked, the least recently seen forgotten first.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from appliance.kit.bounded import BoundedMap


class LogThrottle:
    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 1024,
    ) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._clock = clock
        # key → (next time it may log, repeats suppressed since it last did)
        self._keys: BoundedMap[str, tuple[float, int]] = BoundedMap(max_keys)
        self._lock = threading.Lock()

    def warning(self, key: str, message: str, *args: object) -> None:
        self.log(logging.WARNING, key, message, *args)

    def info(self, key: str, message: str, *args: object) -> None:
        self.log(logging.INFO, key, message, *args)

    def log(self, level: int, key: str, message: str, *args: object) -> None:
        with self._lock:  # the serving loops' threads share module-level throttles
            now = self._clock()
            next_s, suppressed = self._keys.get(key) or (0.0, 0)
            if now < next_s:
                self._keys.set(key, (next_s, suppressed + 1))
                return
            self._keys.set(key, (now + self._interval_s, 0))
        self._logger.log(level, message + " suppressed_since_last=%d", *args, suppressed)
