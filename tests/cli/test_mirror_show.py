"""How `regcache mirror` prints: short digests, windows, a diff's or sync's answer as a
table (errors and waits included), and which answers are failures."""

from __future__ import annotations

from typing import Any

import pytest

from appliance.cli import mirror_show
from appliance.mirror.records import BudgetSeen
from appliance.oci.digest import Digest

SERVING, UPSTREAM = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def test_digests_are_shortened_and_absent_ones_said_so() -> None:
    assert mirror_show.short(Digest.parse(SERVING)) == "sha256:111111111111"
    assert mirror_show.short(None) == "-" and mirror_show.short(None, "?") == "?"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (21600, "6h"), (86400, "1d"), (90, "90s"), (120, "2m"), (3601, "3601s")],
)
def test_a_window_is_written_in_its_largest_whole_unit(seconds: int | None, text: str) -> None:
    assert mirror_show.span(seconds) == text


def test_times_are_utc_iso_to_the_second() -> None:
    assert mirror_show.iso(86400.7) == "1970-01-02T00:00:00+00:00"


def answer(entry_error: str | None = None, tag_error: str | None = None) -> dict[str, Any]:
    tag = {"tag": "v1", "serving": SERVING, "upstream": UPSTREAM, "change": "move",
           "moved": False, "error": tag_error}  # fmt: skip
    return {"entries": [{"entry": "ghcr.io/org/app", "error": entry_error, "waiting": None,
                         "tags": [tag]}]}  # fmt: skip


def test_an_answer_naming_an_error_anywhere_is_a_failure() -> None:
    assert not mirror_show.failed(answer())
    assert mirror_show.failed(answer(entry_error="401"))
    assert mirror_show.failed(answer(tag_error="digest mismatch"))
    assert not mirror_show.failed({"request": 3, "started": True})
    assert not mirror_show.failed({"tag": "x", "message": "pinned"})


def test_an_answer_prints_a_row_per_tag_and_one_for_a_waiting_entry(
    capsys: pytest.CaptureFixture[str],
) -> None:
    result = answer(tag_error="digest mismatch")
    result["entries"][0]["tags"][0].update(change="new", moved=True)
    result["entries"].append({"entry": "alpine:3.20", "error": None, "tags": [],
                              "waiting": "docker.io budget 3 < min 20"})  # fmt: skip
    result["entries"].append({"entry": "quay.io/org/tool:1.0", "error": None, "waiting": None,
                              "tags": []})  # fmt: skip
    mirror_show.show_answer(result)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ENTRY", "TAG", "SERVING", "UPSTREAM", "CHANGE", "ERROR"]
    assert lines[1].split() == [
        "ghcr.io/org/app", "v1", "sha256:111111111111", "sha256:222222222222", "new", "(moved)",
        "digest", "mismatch",
    ]  # fmt: skip
    assert lines[2].split()[:5] == ["alpine:3.20", "-", "-", "-", "waiting"]
    assert lines[2].endswith("docker.io budget 3 < min 20")
    assert lines[3].split() == ["quay.io/org/tool:1.0", "-", "-", "-", "no", "tags"]


def test_budgets_print_remaining_of_limit_or_say_none_was_seen(
    capsys: pytest.CaptureFixture[str],
) -> None:
    mirror_show.show_budgets([])
    assert capsys.readouterr().out == "rate-limit budgets: none seen yet\n"
    mirror_show.show_budgets([BudgetSeen("ghcr.io", "regcache", 5, None, None, 0.0)])
    row = capsys.readouterr().out.splitlines()[1].split()
    assert row == ["ghcr.io", "regcache", "5/?", "-", "1970-01-01", "00:00"]
