"""What a cache answer counts for: its outcome label, the bytes tallied on the cache's
side, and the audit record."""

from __future__ import annotations

from pathlib import Path

from appliance.admin.metrics import Metrics
from appliance.cache.answers import MemoryReply, Redirected, Refused, Relayed
from appliance.oci.digest import Digest
from appliance.proxy.accounting import Tally, outcome
from appliance.proxy.loops import Bridge
from tests.proxy.fakes import stored


def test_outcomes_name_where_the_bytes_came_from(tmp_path: Path) -> None:
    hit = stored(tmp_path, b"x")
    assert outcome(hit) == "hit"
    assert outcome(stored(tmp_path, b"y", stale=True)) == "stale"
    assert outcome(Refused(404)) == "relayed"
    assert outcome(Relayed(MemoryReply(200, {}, b""))) == "relayed"
    assert outcome(Redirected(Digest.of(b"z"), 1, "https://bucket/z")) == "redirected"


class _Served:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []

    def count_served(self, host: str, from_store: int, from_upstream: int) -> None:
        self.calls.append((host, from_store, from_upstream))


def test_the_tally_counts_store_and_upstream_bytes_apart() -> None:
    served, metrics = _Served(), Metrics()
    tally = Tally(served, metrics, Bridge(None), "ghcr.io", "org/app")
    tally.count(100, True)
    tally.count(20, False)
    assert tally.sent == 120
    assert served.calls == [("ghcr.io", 100, 0), ("ghcr.io", 0, 20)]
