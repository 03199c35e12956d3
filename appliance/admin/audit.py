"""The pull audit log: one JSON line per manifest or blob answered, written off the event
loop (a queue drained by a thread) and rotated by size. `regcache audit` reads it back.

Each line: time (UTC, ISO 8601), client, registry, repository, reference (tag or digest
asked for), digest, kind, method, status, bytes (body bytes sent), outcome (hit, miss,
stale, relayed, redirected), ms (time to the last byte).

A line that cannot be written (a full disk) is dropped: the pull it records was served
all the same, and regcache's log says so once a minute (`audit write-failed`).
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import queue
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from appliance.kit.logthrottle import LogThrottle

log = logging.getLogger(__name__)


class _AuditFile(logging.handlers.RotatingFileHandler):
    """The rotating file, whose write failures are logged throttled instead of as a
    traceback on stderr for every line (logging's default)."""

    def __init__(self, path: Path, max_bytes: int, keep: int) -> None:
        super().__init__(path, maxBytes=max_bytes, backupCount=keep, encoding="utf-8")
        self.failures = LogThrottle(log, interval_s=60.0)

    def handleError(self, record: logging.LogRecord) -> None:
        error = sys.exc_info()[1]
        self.failures.warning("write", "audit write-failed error=%s (lines dropped)", error)

    def close(self) -> None:
        try:
            super().close()  # the file is closed even when its last lines cannot be
        except OSError as e:
            self.failures.warning("close", "audit write-failed error=%s (lines dropped)", e)


class AuditLog:
    def __init__(self, path: Path, max_bytes: int, keep: int) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        handler = _AuditFile(path, max_bytes, keep)
        handler.setFormatter(logging.Formatter("%(message)s"))
        self._queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self._listener = logging.handlers.QueueListener(self._queue, handler)
        self._logger = logging.Logger("regcache.audit")  # not in the logging tree
        self._logger.addHandler(logging.handlers.QueueHandler(self._queue))
        self._listener.start()

    def write(self, entry: dict[str, Any]) -> None:
        """Queue one line; never blocks on the disk."""
        self._logger.info(json.dumps(entry, separators=(",", ":")))

    def close(self) -> None:
        self._listener.stop()  # drains the queue first
        for handler in self._listener.handlers:
            handler.close()


def read(path: Path) -> Iterator[dict[str, Any]]:
    """Every entry, oldest first, across the rotated files (`audit.jsonl.N` … `.1`, then
    the current one); lines that do not parse (a torn last line) are skipped."""
    rotated = sorted(
        (p for p in path.parent.glob(path.name + ".*") if p.suffix[1:].isdigit()),
        key=lambda p: -int(p.suffix[1:]),
    )
    for file in [*rotated, path]:
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            continue
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                yield entry
