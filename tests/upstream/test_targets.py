"""Where regcache's own requests may go: never plain HTTP, itself or a metadata service,
unless the config says so."""

from __future__ import annotations

import ipaddress

import pytest

from appliance.cache.ports import UpstreamUnsafe
from appliance.config.hostnames import HostSet
from appliance.upstream.targets import STRICT, TargetPolicy, unsafe_address


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "127.8.9.10", "::1", "169.254.169.254", "fe80::1", "0.0.0.0", "0.1.2.3", "::",
     "224.0.0.1", "ff02::1", "fd00:ec2::254", "100.100.100.200", "::ffff:127.0.0.1",
     "::ffff:169.254.169.254"],
)  # fmt: skip
def test_loopback_link_local_metadata_and_this_network_are_unsafe(address: str) -> None:
    assert unsafe_address(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address", ["192.0.2.1", "10.0.0.1", "2001:db8::1", "100.100.100.201", "::ffff:192.0.2.1"]
)
def test_other_addresses_are_safe(address: str) -> None:
    assert not unsafe_address(ipaddress.ip_address(address))


def test_a_redirect_must_be_https_to_a_name_or_a_safe_address() -> None:
    STRICT.check("https://cdn.example/blob", "registry-1.docker.io")
    STRICT.check("https://192.0.2.1/blob", "ghcr.io")
    for url in ("http://cdn.example/blob", "/relative", "https://127.0.0.1:9580/metrics",
                "https://[::1]/x", "https://169.254.169.254/latest/meta-data"):  # fmt: skip
        with pytest.raises(UpstreamUnsafe, match=r"ghcr\.io sent regcache to"):
            STRICT.check(url, "ghcr.io")


def test_a_registry_allowed_unsafe_targets_and_names_the_operator_pinned_are_let_through() -> None:
    policy = TargetPolicy(HostSet.of(["registry.lab"]), frozenset({"mirror.internal"}))
    policy.check("http://127.0.0.1:5000/v2/", "registry.lab")
    with pytest.raises(UpstreamUnsafe):
        policy.check("http://127.0.0.1:5000/v2/", "ghcr.io")
    loopback, public = ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("192.0.2.1")
    assert policy.address_ok("registry.lab", loopback)
    assert policy.address_ok("mirror.internal", loopback)
    assert not policy.address_ok("evil.example", loopback)
    assert policy.address_ok("evil.example", public)
