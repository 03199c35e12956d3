"""Log lines for journald, when standard error is connected to it.

systemd names the stream it gave the service in `$JOURNAL_STREAM` (device:inode). There,
each line starts with its syslog priority (`<4>`: sd-daemon(3), read by journald since
`SyslogLevelPrefix=` is on by default), so `journalctl -p warning` finds regcache's
warnings, and carries no timestamp, which journald records itself. Anywhere else (a
terminal, a file, a pipe), lines are as before.
"""

from __future__ import annotations

import logging
import os
from typing import TextIO

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
JOURNAL_FORMAT = "%(levelname)s %(name)s %(message)s"


def attached(stream: TextIO | None) -> bool:
    """Whether `stream` is the one systemd connected to the journal."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if stream is None:  # sys.stderr, when the process has none
        return False
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (ValueError, OSError):  # unset or malformed; a stream without a descriptor
        return False


def error(text: str, stream: TextIO) -> None:
    """`text` written as an error: with priority 3 (`err`) where `stream` is the journal,
    so that `journalctl -p err` shows why regcache did not start."""
    print(prefixed(text, logging.ERROR) if attached(stream) else text, file=stream)


def prefixed(text: str, level: int) -> str:
    """Each line of `text` with the syslog priority of `level`: journald makes every line
    an entry of its own, so the lines of a traceback keep their record's priority too.
    Split on newlines only, as journald splits."""
    prefix = f"<{priority(level)}>"
    return "\n".join(prefix + line for line in text.split("\n"))


def priority(level: int) -> int:
    """The syslog priority of a logging level (Python's levels fall between syslog's)."""
    if level >= logging.CRITICAL:
        return 2
    if level >= logging.ERROR:
        return 3
    if level >= logging.WARNING:
        return 4
    if level >= logging.INFO:
        return 6
    return 7


class JournalFormatter(logging.Formatter):
    """Every line of a record prefixed with its priority (`prefixed`)."""

    def __init__(self) -> None:
        super().__init__(JOURNAL_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        return prefixed(super().format(record), record.levelno)


def handler(stream: TextIO) -> logging.Handler:
    """A handler writing to `stream`, formatted for what `stream` is connected to."""
    out = logging.StreamHandler(stream)
    out.setFormatter(JournalFormatter() if attached(stream) else logging.Formatter(PLAIN_FORMAT))
    return out
