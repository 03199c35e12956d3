"""What the proxy knows of a request's Host, from the config's `registries`: TTLs, API or
token realm, whether regcache's credentials stand in for clients (not when they are only
the mirror's: `lend: false`), its label and registry, and the names it also goes by."""

from __future__ import annotations

from pathlib import Path

from appliance.config.model import parse_config
from appliance.config.registries import Registries
from appliance.proxy.site import Site
from appliance.runtime.sites import site_resolver

CONFIG = """\
appliance: {ipv4: 192.0.2.10}
registries:
  - name: docker.io
    hosts: [registry-1.docker.io, index.docker.io]
    auth_hosts: [auth.docker.io]
    tag_ttl_s: 300
    max_stale_s: 3600
  - name: gcr.io
    hosts: [gcr.io, "*.gcr.io"]
  - name: corp
    hosts: [registry.corp.example]
    credentials: {method: basic, username: robot, password: {env: CORP_PASSWORD}}
  - name: private
    hosts: [private.example]
    credentials: {method: static, token: {env: TOKEN}, lend: false}
"""


def sites(tmp_path: Path):  # type: ignore[no-untyped-def]
    return site_resolver(Registries.of(parse_config(CONFIG, tmp_path / "config.yaml")))


def test_an_api_host_gets_its_registrys_policy_and_names(tmp_path: Path) -> None:
    site = sites(tmp_path)("index.docker.io")
    assert site == Site(300, 3600, api=True, own_credentials=False, label="index.docker.io",
                        registry="docker.io",
                        aliases=("registry-1.docker.io", "index.docker.io"))  # fmt: skip


def test_a_token_realm_host_is_no_api_host(tmp_path: Path) -> None:
    site = sites(tmp_path)("auth.docker.io")
    assert site is not None and not site.api and site.registry == "docker.io"


def test_a_name_under_a_wildcard_is_a_registry_of_its_own(tmp_path: Path) -> None:
    resolve = sites(tmp_path)
    eu, plain = resolve("eu.gcr.io"), resolve("gcr.io")
    assert eu is not None and (eu.label, eu.aliases, eu.registry) == ("*.gcr.io", (), "gcr.io")
    assert plain is not None and plain.aliases == ("gcr.io",)


def test_only_credentials_lent_to_clients_stand_in_for_them(tmp_path: Path) -> None:
    resolve = sites(tmp_path)
    lent, kept = resolve("registry.corp.example"), resolve("private.example")
    assert lent is not None and lent.own_credentials
    assert kept is not None and not kept.own_credentials  # the mirror's only: clients log in
    docker = resolve("registry-1.docker.io")
    assert docker is not None and not docker.own_credentials


def test_a_host_no_registry_serves_is_none(tmp_path: Path) -> None:
    assert sites(tmp_path)("example.com") is None
