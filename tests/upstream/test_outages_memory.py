"""`Outages` on a fake clock: stamped from the failure, one retry at a time."""

from __future__ import annotations

from appliance.upstream.outages import Outages

HOST = "registry-1.docker.io:443"


def test_a_failure_is_remembered_from_when_it_happened_not_from_the_attempt() -> None:
    now = [0.0]
    outages = Outages(connect_s=10.0, retry_s=10.0, clock=lambda: now[0])
    assert outages.refusal(HOST) is None  # the attempt starts at 0 ...
    now[0] = 10.0  # ... and times out after the 10 s connect timeout
    outages.failed(HOST, "ConnectionTimeoutError")
    now[0] = 19.9
    assert outages.refusal(HOST) == "ConnectionTimeoutError"  # still held: 10 s from 10
    assert outages.refusal("other.example:443") is None


def test_after_the_memory_one_caller_retries_and_the_others_still_fail_fast() -> None:
    now = [0.0]
    outages = Outages(connect_s=10.0, retry_s=10.0, clock=lambda: now[0])
    outages.failed(HOST, "refused")
    now[0] = 10.0
    assert outages.refusal(HOST) is None  # this one tries
    assert outages.refusal(HOST) == "refused"  # the others do not wait for it
    now[0] = 15.0
    outages.failed(HOST, "timed out")  # it failed: the next 10 s count from here
    now[0] = 24.9
    assert outages.refusal(HOST) == "timed out"
    now[0] = 25.0
    assert outages.refusal(HOST) is None
    outages.connected(HOST)  # it got through: forgotten
    assert outages.refusal(HOST) is None and outages.refusal(HOST) is None


def test_a_retry_that_never_reports_frees_the_slot_after_a_connect_timeout() -> None:
    now = [0.0]
    outages = Outages(connect_s=10.0, retry_s=10.0, clock=lambda: now[0])
    outages.failed(HOST, "refused")
    now[0] = 10.0
    assert outages.refusal(HOST) is None  # tries, then is cancelled and says nothing
    now[0] = 20.9
    assert outages.refusal(HOST) == "refused"
    now[0] = 21.0
    assert outages.refusal(HOST) is None
