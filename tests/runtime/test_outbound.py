"""How regcache reaches real registries, built from a config: its resolver's servers,
the target policy, regcache's own credentials, and a CA bundle that cannot be loaded."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from appliance.config.model import Endpoint, StartupError
from appliance.config.registries import Registries
from appliance.runtime.outbound import (
    credential_sources,
    target_policy,
    upstream_client,
    upstream_resolver,
)
from tests.runtime.configs import config


def test_the_resolver_asks_the_configured_upstreams(tmp_path: Path) -> None:
    settings = config(tmp_path, "dns: {upstreams: ['192.0.2.53:5353', '[2001:db8::53]:53']}\n")
    assert upstream_resolver(settings).servers == (
        Endpoint.parse("192.0.2.53:5353"), Endpoint.parse("[2001:db8::53]:53"),
    )  # fmt: skip


def test_else_the_nameservers_of_resolv_conf_other_than_regcache_itself(tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\nnameserver 192.0.2.7\nsearch lan\n")
    own = "listen: {dns: ['127.0.0.1:53']}\n"
    settings = config(tmp_path, own + f"dns: {{resolv_conf: {resolv}}}\n")
    assert upstream_resolver(settings).servers == (Endpoint.parse("192.0.2.7:53"),)


def test_no_nameserver_anywhere_is_a_warning_not_a_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = config(tmp_path, f"dns: {{resolv_conf: {tmp_path / 'missing'}}}\n")
    assert upstream_resolver(settings).servers == ()
    assert "dns no-upstreams" in caplog.text


def test_unsafe_targets_only_for_registries_that_allow_them_and_names_pinned_in_resolve(
    tmp_path: Path,
) -> None:
    settings = config(
        tmp_path,
        "  - name: lab\n    hosts: [registry.lab]\n    allow_unsafe_targets: true\n"
        "resolve: {mirror.internal: ['127.0.0.1']}\n",
    )
    policy = target_policy(settings, Registries.of(settings))
    loopback = ipaddress.ip_address("127.0.0.1")
    assert policy.address_ok("registry.lab", loopback)
    assert policy.address_ok("mirror.internal", loopback)
    assert not policy.address_ok("registry-1.docker.io", loopback)


def test_each_configured_login_is_one_credential_source_for_all_its_api_hosts(
    tmp_path: Path,
) -> None:
    settings = config(
        tmp_path,
        "    credentials: {method: static, token: {env: REGCACHE_TEST_TOKEN}}\n",
        hosts="registry-1.docker.io, index.docker.io",
    )
    lookup = credential_sources(Registries.of(settings))
    source = lookup("registry-1.docker.io")
    assert source is not None and lookup("index.docker.io") is source
    assert lookup("ghcr.io") is None


async def test_a_ca_bundle_that_cannot_be_loaded_is_a_startup_error_naming_it(
    tmp_path: Path,
) -> None:
    bundle = tmp_path / "bundle.pem"
    bundle.write_text("not a certificate\n")
    settings = config(tmp_path, f"upstream: {{ca_bundle: {bundle}}}\n")
    registries = Registries.of(settings)
    with pytest.raises(StartupError, match=f"upstream.ca_bundle {bundle}: cannot load"):
        upstream_client(settings, registries, upstream_resolver(settings))
