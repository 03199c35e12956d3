"""fields(): one event's key=value pairs, formatted lazily."""

from __future__ import annotations

import logging

import pytest

from appliance.kit.logfields import fields


def test_fields_render_in_order_as_key_value_pairs() -> None:
    assert (
        str(fields(digest="sha256:ab", bytes=12, s="0.045")) == "digest=sha256:ab bytes=12 s=0.045"
    )


def test_a_value_that_would_split_the_line_is_quoted() -> None:
    assert str(fields(reason="HEAD answered 503", empty="", q='a"b')) == (
        'reason="HEAD answered 503" empty="" q="a\\"b"'
    )


def test_nothing_is_formatted_for_a_line_not_emitted(caplog: pytest.LogCaptureFixture) -> None:
    class Loud:
        def __str__(self) -> str:
            raise AssertionError("formatted")

    log = logging.getLogger("test.logfields")
    with caplog.at_level(logging.WARNING, logger="test.logfields"):
        log.info("event %s", fields(value=Loud()))
        log.warning("event %s", fields(value=1))
    assert [r.getMessage() for r in caplog.records] == ["event value=1"]
