"""The ports' own vocabulary: what counts as upstream trouble."""

from __future__ import annotations

from appliance.cache.ports import in_trouble


def test_in_trouble_means_429_or_any_5xx() -> None:
    statuses = (200, 301, 401, 404, 428, 429, 430, 499, 500, 503, 599)
    assert [status for status in statuses if in_trouble(status)] == [429, 500, 503, 599]
