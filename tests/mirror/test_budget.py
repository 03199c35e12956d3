"""Upstream's rate-limit budgets as its answers state them: parsed from the header,
kept per host and egress identity (never a client's own), spent by the mirror's GETs,
refilled once their window has passed, and bounded in hosts."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from appliance.mirror.budget import Budgets, parse
from appliance.mirror.records import BudgetSeen

HUB = "registry-1.docker.io"


@pytest.mark.parametrize(
    ("header", "parsed"),
    [
        ("76;w=21600", (76, 21600)),
        ("76", (76, None)),
        (" 100 ; w=21600 ; x=1", (100, 21600)),
        ("76;w=soon", (76, None)),
        ("0;w=60", (0, 60)),
        (None, None),
        ("", None),
        ("lots", None),
        (";w=21600", None),
        ("7.5;w=60", None),
    ],
)
def test_the_header_is_a_count_and_an_optional_window(
    header: str | None, parsed: tuple[int, int | None] | None
) -> None:
    assert parse(header) == parsed


def answer(remaining: str, limit: str | None = None) -> CIMultiDict[str]:
    headers = CIMultiDict({"RateLimit-Remaining": remaining})  # any spelling: it is HTTP
    if limit is not None:
        headers["RateLimit-Limit"] = limit
    return headers


def test_an_answer_states_the_budget_of_its_host_and_identity() -> None:
    now = [5000.0]
    budgets = Budgets(clock=lambda: now[0])
    budgets.seen(HUB, "anonymous", answer("76;w=21600", "100;w=21600"))
    budgets.seen("ghcr.io", "regcache", answer("9"))
    assert budgets.all() == [
        BudgetSeen("ghcr.io", "regcache", 9, None, None, 5000.0),
        BudgetSeen(HUB, "anonymous", 76, 100, 21600, 5000.0),
    ]
    budgets.seen(HUB, "anonymous", CIMultiDict({"Content-Type": "text/plain"}))  # says nothing
    assert [b.remaining for b in budgets.all()] == [9, 76]


def test_the_window_comes_from_the_limit_when_remaining_names_none() -> None:
    budgets = Budgets(clock=lambda: 1.0)
    budgets.seen(HUB, "anonymous", answer("3", "100;w=600"))
    assert budgets.all()[0].window_s == 600


def test_a_clients_own_credential_is_not_a_budget_the_mirror_keeps() -> None:
    budgets = Budgets()
    budgets.seen(HUB, "clients", answer("1;w=60"))
    assert budgets.all() == [] and not budgets.changed
    assert budgets.allows(HUB, "clients", 10) is None


def test_gets_are_allowed_while_at_least_the_minimum_would_be_left() -> None:
    budgets = Budgets(clock=lambda: 1.0)
    assert budgets.allows(HUB, "anonymous", 10) is None  # nothing known yet
    budgets.seen(HUB, "anonymous", answer("11;w=21600"))
    assert budgets.allows(HUB, "anonymous", 10) is None  # 10 left after it
    assert budgets.allows(HUB, "anonymous", 10, spend=2) is not None
    assert budgets.allows(HUB, "regcache", 10) is None  # another identity's budget
    budgets.seen(HUB, "anonymous", answer("10;w=21600"))
    refused = budgets.allows(HUB, "anonymous", 10)
    assert refused is not None and refused.remaining == 10
    assert budgets.allows(HUB, "anonymous", 0) is None


def test_each_get_is_counted_until_upstream_states_the_figure_again() -> None:
    budgets = Budgets(clock=lambda: 1.0)
    budgets.spent(HUB, "anonymous")  # nothing known: nothing to count from
    assert budgets.all() == []
    budgets.seen(HUB, "anonymous", answer("12;w=21600"))
    budgets.spent(HUB, "anonymous")
    assert budgets.allows(HUB, "anonymous", 10) is None
    budgets.spent(HUB, "anonymous")
    assert budgets.allows(HUB, "anonymous", 10) is not None
    assert budgets.all()[0].remaining == 10
    budgets.seen(HUB, "anonymous", answer("50;w=21600"))
    assert budgets.allows(HUB, "anonymous", 10) is None


def test_spending_never_goes_below_zero() -> None:
    budgets = Budgets(clock=lambda: 1.0)
    budgets.seen(HUB, "anonymous", answer("1"))
    for _ in range(3):
        budgets.spent(HUB, "anonymous")
    assert budgets.all()[0].remaining == 0


def test_a_budget_older_than_its_window_has_refilled() -> None:
    now = [1000.0]
    budgets = Budgets(clock=lambda: now[0])
    budgets.seen(HUB, "anonymous", answer("2;w=600"))
    now[0] += 600
    assert budgets.allows(HUB, "anonymous", 10) is not None  # still within the window
    now[0] += 1
    assert budgets.allows(HUB, "anonymous", 10) is None


def test_without_a_window_only_a_new_answer_refills_it() -> None:
    now = [1000.0]
    budgets = Budgets(clock=lambda: now[0])
    budgets.seen(HUB, "anonymous", answer("2"))
    now[0] += 30 * 86400
    assert budgets.allows(HUB, "anonymous", 10) is not None


def test_changes_are_taken_once() -> None:
    budgets = Budgets(clock=lambda: 1.0)
    assert budgets.take_changes() == []
    budgets.seen(HUB, "anonymous", answer("20"))
    assert [b.remaining for b in budgets.take_changes()] == [20]
    assert budgets.take_changes() == []
    budgets.seen(HUB, "regcache", answer("30"))
    assert [b.remaining for b in budgets.take_changes()] == [20, 30]


def test_hosts_are_bounded_but_known_ones_keep_being_updated() -> None:
    budgets = Budgets(clock=lambda: 1.0)
    for i in range(256):
        budgets.seen(f"host{i}.example", "anonymous", answer("5"))
    budgets.seen("one-too-many.example", "anonymous", answer("5"))
    assert len(budgets.all()) == 256
    assert all(b.registry != "one-too-many.example" for b in budgets.all())
    budgets.seen("host7.example", "anonymous", answer("99"))
    assert {b.remaining for b in budgets.all() if b.registry == "host7.example"} == {99}


def test_a_negative_or_signed_count_is_no_count() -> None:
    assert parse("-3;w=60") is None and parse("+3") is None
