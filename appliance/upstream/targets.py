"""Where regcache's own requests may go. Redirects and token realms are chosen by
upstream (or by whoever answers for it), so they must not lead regcache to plain HTTP,
to itself (the admin listener on 127.0.0.1) or to a cloud metadata service (issue #13).

A registry whose config sets `allow_unsafe_targets` (one on the gateway itself, a lab)
may; so may names given static addresses in `resolve`, which the operator wrote.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from yarl import URL

from appliance.cache.ports import UpstreamUnsafe
from appliance.config.hostnames import HostSet
from appliance.config.model import IPAddress

# Metadata services outside the link-local range: AWS over IPv6, Alibaba Cloud.
_METADATA = frozenset(ipaddress.ip_address(a) for a in ("fd00:ec2::254", "100.100.100.200"))
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")


def unsafe_address(address: IPAddress) -> bool:
    """Loopback, link-local, unspecified, multicast, "this network", or a metadata service."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (
        address.is_loopback
        or address.is_link_local
        or address.is_unspecified
        or address.is_multicast
        or address in _METADATA
        or (isinstance(address, ipaddress.IPv4Address) and address in _THIS_NETWORK)
    )


@dataclass(frozen=True, slots=True)
class TargetPolicy:
    allowed: HostSet
    """Hosts (API, auth and redirect) of registries with `allow_unsafe_targets`."""
    static: frozenset[str] = frozenset()
    """Names with addresses from `resolve`."""

    def check(self, url: str, origin: str) -> None:
        """Raise UpstreamUnsafe unless regcache may follow a redirect or token realm to
        `url` met while asking `origin` (a host)."""
        if self.allowed.match(origin):
            return
        target = URL(url, encoded=True)
        if target.scheme != "https":
            raise UpstreamUnsafe(f"{origin} sent regcache to a {target.scheme or 'relative'} URL")
        host = (target.host or "").strip("[]")
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            return  # a name: its addresses are checked when it is resolved
        if unsafe_address(literal) and host not in self.static:
            raise UpstreamUnsafe(f"{origin} sent regcache to {literal}")

    def address_ok(self, host: str, address: IPAddress) -> bool:
        """Whether a name resolved through DNS may be connected to at `address`."""
        return host in self.static or self.allowed.match(host) or not unsafe_address(address)


STRICT = TargetPolicy(HostSet(frozenset(), ()))
"""No exceptions: every redirect and realm must be https to a safe address."""
