"""The `peers` section: the other gateways of a site. A cold blob's owner among the live
ones is chosen by rendezvous hashing of its digest; the others stream it from the owner
as it fills, so upstream sends it once (issue #19)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

from appliance.config.strict_yaml import check
from appliance.config.values import Endpoint, IPAddress, between, non_empty


@dataclass(frozen=True, slots=True)
class PeersConfig:
    members: tuple[Endpoint, ...] = field(metadata=check(non_empty))
    """Every gateway's TLS proxy (`10.0.0.1:443`), this one's included (`appliance.ipv4`):
    the same list on every gateway."""
    ca_bundle: Path | None = None
    """The CA (PEM) the peers' certificates come from; unset: this gateway's own CA, as
    when the gateways share one CA (their clients trust one)."""
    probe_interval_s: float = field(default=5.0, metadata=check(between(1, 300)))
    """How often each peer is checked (a TLS handshake); one that fails a relay is
    taken as down at once, until a check finds it up."""
    connect_timeout_s: float = field(default=2.0, metadata=check(between(0.1, 30)))
    read_timeout_s: float = field(default=60.0, metadata=check(between(1, 3600)))
    """A relay stalled this long (the owner's own upstream stalled) fails."""

    def self_index(self, own: tuple[IPAddress, ...]) -> int | None:
        """Which member this gateway is (its address among `own`)."""
        return next((i for i, m in enumerate(self.members) if m.address in own), None)


def check_peers(
    peers: PeersConfig | None, own: tuple[IPAddress, ...], fail: Callable[[str, str], NoReturn]
) -> None:
    """This gateway is a member (so that every gateway computes the same owners), and no
    member is listed twice."""
    if peers is None:
        return
    if peers.self_index(own) is None:
        listed = ", ".join(str(a) for a in own)
        fail("peers.members", f"must list this gateway too (appliance address {listed}):"
                              " every gateway needs the same list")  # fmt: skip
    for i, member in enumerate(peers.members):
        if member.address in (m.address for m in peers.members[:i]):
            fail(f"peers.members[{i}]", f"{member.address} is listed twice")
