"""The `mirror_mode:` section: off by default; its names are new ones of the site's own,
intercepted and given leaves like a registry's but routed to none; its endpoints are not
`listen.https`'s; its default registry is a configured one."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config.mirrormode import MirrorModeConfig
from appliance.config.model import ConfigError, parse_config
from appliance.config.registries import Registries
from appliance.config.values import Endpoint

BASE = """\
appliance: {ipv4: 192.0.2.10}
listen: {https: ["0.0.0.0:443"]}
registries:
  - name: docker.io
    hosts: [registry-1.docker.io, index.docker.io]
    auth_hosts: [auth.docker.io]
  - name: ghcr.io
    hosts: [ghcr.io]
local: {hosts: [registry.build.internal]}
"""
ORIGIN = Path("/etc/regcache/config.yaml")


def refused(section: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE + section, ORIGIN)
    return str(caught.value)


def test_no_section_means_mirror_mode_is_off() -> None:
    config = parse_config(BASE, ORIGIN)
    assert config.mirror_mode == MirrorModeConfig()
    assert config.mirror_mode.names == () and config.mirror_mode.listen == ()
    assert config.mirror_mode.default_registry == "docker.io"


def test_a_full_section_loads_and_its_names_are_intercepted_but_route_nowhere() -> None:
    config = parse_config(
        BASE + "mirror_mode:\n  names: [Regcache.Build.Internal]\n"
        "  listen: ['0.0.0.0:5443']\n  default_registry: ghcr.io\n",
        ORIGIN,
    )
    mode = config.mirror_mode
    assert mode.names == ("regcache.build.internal",)
    assert mode.listen == (Endpoint.parse("0.0.0.0:5443"),)
    assert mode.default_registry == "ghcr.io"
    registries = Registries.of(config)
    assert registries.intercepted.match("regcache.build.internal")  # DNS answers, TLS mints
    assert registries.mirror_names.match("REGCACHE.build.internal.")
    assert registries.route("regcache.build.internal") is None
    assert not registries.fail_open.match("regcache.build.internal")
    assert "regcache.build.internal" in registries.permitted_domains


@pytest.mark.parametrize(
    ("section", "key", "words"),
    [
        ("mirror_mode: {names: [ghcr.io]}\n", "mirror_mode.names[0]", "configured registry"),
        ("mirror_mode: {names: [auth.docker.io]}\n", "mirror_mode.names[0]", "configured"),
        ("mirror_mode: {names: [registry.build.internal]}\n", "mirror_mode.names[0]",
         "local registry name"),
        ("mirror_mode: {names: [mirror.gcr.io]}\n", "mirror_mode.names[0]",
         "public registry 'gcr.io'"),
        ("mirror_mode: {names: [a.internal, A.internal]}\n", "mirror_mode.names[1]",
         "listed twice"),
        ("mirror_mode: {names: ['*.internal']}\n", "mirror_mode.names[0]", ""),
        ("mirror_mode: {names: [a.internal], listen: ['0.0.0.0:443']}\n",
         "mirror_mode.listen[0]", "already in listen.https"),
        ("mirror_mode: {names: [a.internal], default_registry: quay.io}\n",
         "mirror_mode.default_registry", "no configured registry"),
        ("mirror_mode: {listen: ['0.0.0.0:5443']}\n", "mirror_mode.names", "needs at least one"),
        ("mirror_mode: {names: [a.internal], ns: x}\n", "mirror_mode.ns", "unknown key"),
    ],
)  # fmt: skip
def test_a_bad_value_is_refused_naming_its_key(section: str, key: str, words: str) -> None:
    message = refused(section)
    assert f": {key}:" in message and words in message


def test_a_ca_constrained_to_domains_must_cover_the_mirror_names() -> None:
    message = refused(
        "tls: {name_constraints: true, permitted_domains: [docker.io, ghcr.io, build.internal]}\n"
        "mirror_mode: {names: [regcache.gateway.example]}\n"
    )
    assert "tls.permitted_domains" in message and "regcache.gateway.example" in message
