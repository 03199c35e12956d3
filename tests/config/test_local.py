"""The `local:` section: loaded strictly; its hosts shadow no upstream (neither a
configured registry's names nor a public registry's), and they are intercepted like any
registry's yet routed to no upstream."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.config.local import LocalAuth, LocalConfig, LocalRule
from appliance.config.model import ConfigError, parse_config
from appliance.config.registries import Registries
from appliance.config.values import Duration

BASE = """\
appliance: {ipv4: 192.0.2.10}
registries:
  - name: ghcr.io
    hosts: [ghcr.io]
  - name: corp
    hosts: [registry.corp.example, "*.mirror.corp.example"]
    auth_hosts: [sso.corp.example]
    redirect_hosts: [cdn.corp.example]
    intercept_auth_hosts: false
"""
ORIGIN = Path("/etc/regcache/config.yaml")


def parsed(local: str) -> LocalConfig:
    return parse_config(BASE + local, ORIGIN).local


def refused(local: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(BASE + local, ORIGIN)
    return str(caught.value)


def test_no_section_means_no_local_registry_and_the_documented_defaults() -> None:
    config = parse_config(BASE, ORIGIN)
    assert config.local == LocalConfig()
    assert config.local.hosts == ()
    assert config.local.purge_uploads_after == Duration(86400.0)
    assert config.local.max_uploads == 256
    assert config.local.auth == LocalAuth(htpasswd=None, scheme="token")
    assert config.local.auth.token_ttl == Duration(300.0)
    # One rule: every user (everyone, without htpasswd) reads and writes everything.
    assert config.local.access == (LocalRule(("*",), ("*",), ("*",)),)


def test_a_full_section_loads_with_its_values(tmp_path: Path) -> None:
    local = parsed(f"""\
local:
  hosts: [registry.build.internal, Reg.Build.Internal2]
  purge_uploads_after: 2h
  max_uploads: 10
  auth: {{htpasswd: {tmp_path}/htpasswd, scheme: basic, token_ttl: 10m}}
  access:
    - {{repositories: ["team/*"], read: [anonymous], write: [alice]}}
    - {{repositories: [public], read: ["*"]}}
""")
    assert local.hosts == ("registry.build.internal", "reg.build.internal2")
    assert local.purge_uploads_after == Duration(7200.0)
    assert local.max_uploads == 10
    assert local.auth == LocalAuth(tmp_path / "htpasswd", "basic", Duration(600.0))
    assert local.access == (
        LocalRule(("team/*",), ("anonymous",), ("alice",)),
        LocalRule(("public",), ("*",), ("*",)),
    )


@pytest.mark.parametrize(
    ("local", "key", "line", "words"),
    [
        ("local:\n  hosts: [ghcr.io]\n", "local.hosts[0]", 11, "configured registry's host"),
        # A name under a configured `*.` pattern is that registry's too.
        ("local:\n  hosts:\n    - ok.internal\n    - x.mirror.corp.example\n",
         "local.hosts[1]", 13, "configured registry's host"),
    ],
)  # fmt: skip
def test_a_configured_registrys_host_is_refused_naming_the_key_and_line(
    local: str, key: str, line: int, words: str
) -> None:
    message = refused(local)
    assert f"line {line}: {key}:" in message and words in message


@pytest.mark.parametrize(
    ("host", "public"),
    [
        ("docker.io", "docker.io"),
        ("mirror.gcr.io", "gcr.io"),
        ("europe-docker.pkg.dev", "pkg.dev"),
        ("123.dkr.ecr.eu-west-1.amazonaws.com", "amazonaws.com"),
        ("quay.io", "quay.io"),
    ],
)
def test_a_host_under_a_public_registry_is_refused(host: str, public: str) -> None:
    message = refused(f"local:\n  hosts: [registry.build.internal, {host}]\n")
    assert "line 11: local.hosts[1]:" in message
    assert f"would shadow the public registry {public!r}" in message


def test_a_name_merely_ending_like_a_public_registry_is_accepted() -> None:
    # `notdocker.io` is not under `docker.io`: only whole labels count.
    assert parsed("local:\n  hosts: [notdocker.io, gcr.io.internal]\n").hosts == (
        "notdocker.io",
        "gcr.io.internal",
    )


def test_a_host_listed_twice_is_refused_whatever_its_case() -> None:
    message = refused("local:\n  hosts:\n    - reg.internal\n    - other.internal\n"
                      "    - REG.internal\n")  # fmt: skip
    assert "line 14: local.hosts[2]:" in message and "listed twice" in message


@pytest.mark.parametrize(
    ("local", "key", "words"),
    [
        ("local:\n  hosts: [r.internal]\n  auth: {scheme: digest}\n", "local.auth.scheme",
         "must be one of token, basic"),
        ("local:\n  hosts: [r.internal]\n  auth: {token_ttl: 0s}\n", "local.auth.token_ttl",
         "more than 0"),
        ("local:\n  hosts: [r.internal]\n  purge_uploads_after: 0s\n",
         "local.purge_uploads_after", "more than 0"),
        ("local:\n  hosts: [r.internal]\n  max_uploads: 0\n", "local.max_uploads", ""),
        ("local:\n  hosts: [r.internal]\n  access: [{repositories: []}]\n",
         "local.access[0].repositories", "empty"),
        ("local:\n  hosts: [r.internal]\n  users: x\n", "local.users", "unknown key"),
    ],
)  # fmt: skip
def test_a_bad_value_is_refused_naming_its_key(local: str, key: str, words: str) -> None:
    message = refused(local)
    assert f": {key}:" in message and words in message


def test_a_push_policy_of_local_is_refused_pointing_to_local_hosts() -> None:
    text = BASE.replace(
        "    hosts: [ghcr.io]\n", "    hosts: [ghcr.io]\n    push: [{policy: local}]\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, ORIGIN)
    message = str(caught.value)
    assert "line 5: registries[0].push[0].policy:" in message
    assert "local.hosts" in message


def test_local_hosts_are_intercepted_but_routed_to_no_upstream_and_never_fail_open() -> None:
    config = parse_config(BASE + "local:\n  hosts: [registry.build.internal]\n", ORIGIN)
    registries = Registries.of(config)
    assert registries.intercepted.match("registry.build.internal")  # DNS answers, TLS mints
    assert registries.intercepted.match("REGISTRY.build.internal.")
    assert registries.local.match("registry.build.internal")
    assert registries.route("registry.build.internal") is None
    assert not registries.fail_open.match("registry.build.internal")
    assert registries.fail_open.match("ghcr.io")  # while other registries' names do
    assert "registry.build.internal" in registries.permitted_domains
    assert not registries.local.match("ghcr.io")


def test_a_ca_constrained_to_domains_must_cover_the_local_hosts() -> None:
    message = refused(
        "tls: {name_constraints: true, permitted_domains: [ghcr.io, corp.example]}\n"
        "local:\n  hosts: [registry.build.internal]\n"
    )
    assert "tls.permitted_domains" in message and "registry.build.internal" in message


@pytest.mark.parametrize("host", ["sso.corp.example", "cdn.corp.example"])
def test_a_registrys_auth_or_redirect_host_is_refused_too(host: str) -> None:
    message = refused(f"local:\n  hosts: [{host}]\n")
    assert "local.hosts[0]" in message
