"""A finding's report line: PASS with what was found, FAIL with it and how to fix it."""

from __future__ import annotations

from appliance.kit.findings import Finding


def test_a_pass_is_one_line_and_a_fail_says_the_fix() -> None:
    assert Finding("s3 bucket b", True, "answers").line() == "PASS  s3 bucket b: answers"
    failed = Finding("peer 10.0.0.2:443", False, "refused", "start regcache there").line()
    assert failed == "FAIL  peer 10.0.0.2:443: refused\n      fix: start regcache there"
