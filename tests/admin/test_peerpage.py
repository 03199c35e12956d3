"""The status page's peers section: each gateway's state, its share and relays; a peer
that is down is marked and says why; text is escaped."""

from __future__ import annotations

from appliance.admin.peerpage import PeerRow, render


def test_up_and_down_peers_with_their_shares() -> None:
    text = render([
        PeerRow("10.0.0.1:443", True, 0.0, "this gateway", 0.5, 0, 0, 0),
        PeerRow("10.0.0.2:443", True, 1_700_000_000.0, "", 0.5, 12, 1, 2),
        PeerRow("10.0.0.3:443", False, 1_700_000_000.0, "<refused>", 0.0, 3, 3, 0),
    ])  # fmt: skip
    assert "<td><code>10.0.0.1:443</code></td><td>this gateway</td><td>50%</td>" in text
    assert (
        "up since 2023-11-14 22:13:20 UTC</td><td>50%</td><td>12</td><td>1</td><td>2</td>" in text
    )
    assert '<tr class="bad"><td><code>10.0.0.3:443</code></td><td>DOWN since' in text
    assert "&lt;refused&gt;" in text and "<refused>" not in text
    assert text.count('class="bad"') == 1


def test_a_peer_never_checked_says_so() -> None:
    text = render([PeerRow("10.0.0.2:443", False, 0.0, "not checked yet", 0.0, 0, 0, 0)])
    assert "<td>not checked yet</td><td>0%</td>" in text
