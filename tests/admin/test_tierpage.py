"""The status page's shared-tier section: the bucket, whether it answers (a problem is
shown as degraded), what it holds and what this gateway did; text is escaped."""

from __future__ import annotations

from appliance.admin.tierpage import TierState, render


def test_a_healthy_tier_shows_its_holdings_and_this_gateways_counts() -> None:
    text = render(TierState(
        "http://10.0.0.5:8333", "build-cache", None,
        {"reads": 3, "read_bytes": 5 << 20, "uploads": 2, "upload_bytes": 1 << 30, "waits": 1,
         "redirects": 7},
        (120, 3 << 30, True, 2, 0.0),
    ))  # fmt: skip
    assert "build-cache" in text and "answers" in text and 'class="bad"' not in text
    assert "120 blobs, 3.0 GiB; 2 fills leading now" in text
    assert "<td>clients sent to the bucket</td><td>7</td>" in text
    assert "<td>3</td>\n<td>5.0 MiB</td>" in text and "<td>2</td>\n<td>1.0 GiB</td>" in text


def test_a_problem_is_shown_degraded_and_escaped() -> None:
    text = render(TierState("http://s3", "b", "<refused>", {}, (5, 10, False, 0, 0.0)))
    assert 'class="bad"' in text and "DEGRADED: &lt;refused&gt;" in text
    assert "at least 5 blobs" in text
    assert "not surveyed yet" in render(TierState("http://s3", "b", None, {}, None))
