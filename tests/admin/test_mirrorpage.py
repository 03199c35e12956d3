"""The status page's mirror section: entries, budgets and latest moves, escaped."""

from __future__ import annotations

from appliance.admin import mirrorpage
from appliance.mirror.records import BudgetSeen, Move, Place
from appliance.mirror.scheduler import Figures
from appliance.oci.digest import Digest

OLD, NEW = Digest.of(b"old"), Digest.of(b"new")


def figures(**changes: object) -> Figures:
    base = dict(entry="docker.io/library/alpine:3.20", tags=1, drift=0, gone=0, state="idle",
                last_success_s=1.0e9, next_run_s=2.0e9, duration_s=1.5, fetched_bytes=2048,
                error=None)  # fmt: skip
    base.update(changes)
    return Figures(**base)  # type: ignore[arg-type]


def test_nothing_mirrored_renders_no_section() -> None:
    assert mirrorpage.render([], [], []) == ""


def test_entries_budgets_and_moves_are_shown_with_trouble_marked() -> None:
    move = Move(Place("docker.io", "library/alpine", "3.20"), OLD, NEW, 1.0e9, "rollback",
                "3.20-20010909")  # fmt: skip
    budget = BudgetSeen("registry-1.docker.io", "anonymous", 7, 100, 21600, 1.0e9)
    page = mirrorpage.render(
        [figures(drift=1, state="waiting", error="budget <b>low</b>")], [budget], [move]
    )
    assert 'id="mirror-entries"' in page and "docker.io/library/alpine:3.20" in page
    assert '<td class="bad">1</td>' in page  # drift
    assert '<td class="bad">waiting</td>' in page
    assert "budget &lt;b&gt;low&lt;/b&gt;" in page and "<b>low</b>" not in page
    assert "7 / 100" in page and "2001-09-09 07:46:40 UTC" in page  # window end: seen + w
    assert "rollback" in page and str(OLD)[:19] in page and "3.20-20010909" in page


def test_an_entry_never_run_shows_dashes() -> None:
    page = mirrorpage.render([figures(last_success_s=None, next_run_s=float("inf"),
                                      duration_s=None)], [], [])  # fmt: skip
    assert page.count("<td>-</td>") >= 3
