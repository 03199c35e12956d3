"""Log lines for journald: recognised by $JOURNAL_STREAM alone, priority on every line."""

from __future__ import annotations

import io
import logging
import os
import sys
from pathlib import Path

import pytest

from appliance.kit import journal


def _record(level: int, msg: str, exc: bool = False) -> logging.LogRecord:
    info = None
    if exc:
        try:
            raise ValueError("boom")
        except ValueError:
            info = sys.exc_info()
    return logging.LogRecord("appliance.x", level, __file__, 1, msg, None, info)


def test_attached_only_to_the_stream_journal_stream_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (tmp_path / "a").open("w") as a, (tmp_path / "b").open("w") as b:
        st = os.fstat(a.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert journal.attached(a)
        assert not journal.attached(b)  # another file: a redirect, not the journal
        assert not journal.attached(io.StringIO())  # no descriptor at all
        for bad in ("", "garbage", f"{st.st_dev}:", f"x:{st.st_ino}"):
            monkeypatch.setenv("JOURNAL_STREAM", bad)
            assert not journal.attached(a)
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not journal.attached(a)


def test_every_line_carries_its_priority_and_no_timestamp() -> None:
    formatter = journal.JournalFormatter()
    assert formatter.format(_record(logging.INFO, "ready")) == "<6>INFO appliance.x ready"
    assert formatter.format(_record(logging.WARNING, "w")).startswith("<4>WARNING ")
    assert formatter.format(_record(logging.ERROR, "e")).startswith("<3>")
    assert formatter.format(_record(logging.CRITICAL, "c")).startswith("<2>")
    assert formatter.format(_record(logging.DEBUG, "d")).startswith("<7>")
    lines = formatter.format(_record(logging.ERROR, "failed", exc=True)).splitlines()
    assert len(lines) > 3 and all(line.startswith("<3>") for line in lines)
    assert lines[-1] == "<3>ValueError: boom"


def test_the_handler_formats_for_where_it_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (tmp_path / "log").open("w") as out:
        st = os.fstat(out.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        journal.handler(out).handle(_record(logging.WARNING, "to the journal"))
        monkeypatch.delenv("JOURNAL_STREAM")
        journal.handler(out).handle(_record(logging.WARNING, "to a file"))
    first, second = (tmp_path / "log").read_text().splitlines()
    assert first == "<4>WARNING appliance.x to the journal"
    assert second.endswith(" WARNING appliance.x to a file") and second[:4].isdigit()


def test_errors_the_cli_prints_are_errors_in_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why regcache did not start (a config error, a refused index) shows under
    `journalctl -p err`; lines are split on newlines only, as journald splits them."""
    with (tmp_path / "log").open("w") as out:
        st = os.fstat(out.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        journal.error("regcache: bad\nsecond line\rkept", out)
        monkeypatch.delenv("JOURNAL_STREAM")
        journal.error("regcache: plain", out)
    with (tmp_path / "log").open(newline="") as written:
        text = written.read()
    assert text == ("<3>regcache: bad\n<3>second line\rkept\nregcache: plain\n")
    assert not journal.attached(None)  # a process without standard error
