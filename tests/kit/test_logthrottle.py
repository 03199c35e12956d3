from __future__ import annotations

import logging

import pytest

from appliance.kit.logthrottle import LogThrottle


def test_repeats_within_the_interval_are_counted_not_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    throttle = LogThrottle(logging.getLogger("t"), interval_s=30, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING):
        for i in range(5):
            throttle.warning("servfail", "dns servfail name=%s", f"n{i}")
        throttle.warning("shed", "dns shed")
        now[0] = 31
        throttle.warning("servfail", "dns servfail name=%s", "later")
    assert [r.getMessage() for r in caplog.records] == [
        "dns servfail name=n0 suppressed_since_last=0",
        "dns shed suppressed_since_last=0",
        "dns servfail name=later suppressed_since_last=4",
    ]


def test_keys_are_bounded_oldest_forgotten_first(caplog: pytest.LogCaptureFixture) -> None:
    throttle = LogThrottle(logging.getLogger("t"), interval_s=30, clock=lambda: 0.0, max_keys=3)
    with caplog.at_level(logging.INFO):
        for key in ("a", "b", "c", "d"):  # client-chosen keys: "a" is pushed out
            throttle.info(key, "refused repository=%s", key)
        throttle.info("a", "refused repository=%s", "a")  # forgotten: logs again
        throttle.info("d", "refused repository=%s", "d")  # still throttled
    assert [r.getMessage().split()[1] for r in caplog.records] == [
        "repository=a", "repository=b", "repository=c", "repository=d", "repository=a",
    ]  # fmt: skip
    assert len(throttle._keys) == 3
