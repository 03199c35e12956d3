"""The status page: what it shows, and nothing a client chose is HTML."""

from __future__ import annotations

from appliance.admin.metrics import Savings
from appliance.admin.status import RegistryFigures, Status
from appliance.admin.statuspage import render


def test_names_and_problems_are_escaped_and_the_figures_shown() -> None:
    status = Status(
        ready=False,
        problems=["store: <cannot> write"],
        store_bytes=2048,
        free_bytes=3 << 30,
        registries={"evil<script>": RegistryFigures(hits=3, misses=1, from_store=1536)},
    )
    savings = Savings()
    savings.served("ghcr.io", "org/<b>x</b>", 1536, from_store=True)
    savings.served("ghcr.io", "org/y", 512, from_store=False)
    page = render(status, savings, "AB:CD:EF")
    assert "<script>" not in page and "<b>x" not in page
    assert "evil&lt;script&gt;" in page and "ghcr.io/org/&lt;b&gt;x&lt;/b&gt;" in page
    assert "NOT READY: store: &lt;cannot&gt; write" in page
    assert '<b id="store-bytes">2.0 KiB</b>3.0 GiB free' in page
    assert '<b id="hit-ratio">75%</b>4 answers' in page
    assert '<b id="saved-bytes">1.5 KiB</b>' in page and '<b id="fetched-bytes">512 B</b>' in page
    assert '<code id="ca-fingerprint">AB:CD:EF</code>' in page and 'id="saved-line"' in page


def test_a_ready_appliance_with_no_answers_yet_shows_no_ratio() -> None:
    page = render(Status(True, [], 0, 0, {}), Savings(), "")
    assert '<span id="ready" class="">ready</span>' in page
    assert '<b id="hit-ratio">-</b>0 answers' in page
