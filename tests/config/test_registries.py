"""One `registries` list drives DNS interception, leaf minting, routing and credentials:
every configured host gets all of them, through the very wiring `regcache serve` uses."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

from dnslib import QTYPE, DNSRecord

from appliance.config.model import parse_config
from appliance.dns.responder import Forward
from appliance.main import Parts, build
from appliance.runtime.interception import dns_server
from appliance.runtime.outbound import credential_sources, target_policy
from appliance.runtime.sites import site_resolver
from appliance.upstream.credentials import CredentialSource

CONFIG = """\
appliance: {ipv4: 192.0.2.10}
state_dir: state
dns: {upstreams: ["127.0.0.1:9"]}
registries:
  - name: docker.io
    hosts: [registry-1.docker.io, index.docker.io]
    auth_hosts: [auth.docker.io]
    redirect_hosts: [production.cloudflare.docker.com, "*.r2.cloudflarestorage.com"]
  - name: gcr.io
    hosts: [gcr.io, "*.gcr.io"]
    redirect_hosts: [storage.googleapis.com]
  - name: pkg.dev
    hosts: ["*.pkg.dev"]
    fail_open: false
  - name: corp
    hosts: [registry.corp.example, "*.mirror.corp.example"]
    auth_hosts: [login.corp.example]
    credentials: {method: basic, username: robot, password: {env: CORP_PASSWORD}}
  - name: lab
    hosts: [harbor.lab.example]
    auth_hosts: [sso.lab.example]
    intercept_auth_hosts: false
    credentials: {method: static, token: {env: LAB_TOKEN}}
    allow_unsafe_targets: true
"""


def concrete(pattern: str) -> str:
    """A host a pattern matches: itself, or a name under a `*.` suffix."""
    return "eu-west1." + pattern[2:] if pattern.startswith("*.") else pattern


def leaf(parts: Parts, host: str) -> ssl.SSLContext | None:
    """The leaf the HTTPS front door would choose for SNI `host` (minting it)."""
    return asyncio.run(parts.leaves.context(host))


def answer(parts: Parts, host: str, *, healthy: bool) -> str | None:
    """The A record regcache's DNS answers for `host`, or None when it forwards."""
    responder = dns_server(
        parts.config, parts.registries, parts.resolver, parts.metrics, lambda: healthy
    ).responder
    query = DNSRecord.question(host, "A").pack()
    reply = responder.decide(query, "127.0.0.1", tcp=False)
    if isinstance(reply, Forward):
        return None
    assert reply is not None
    records = DNSRecord.parse(reply).rr
    assert [r.rtype for r in records] == [QTYPE.A], host
    return str(records[0].rdata)


def test_every_configured_host_is_intercepted_served_routed_and_lent_credentials(
    tmp_path: Path,
) -> None:
    config = parse_config(CONFIG, tmp_path / "config.yaml")
    parts = build(config, tmp_path / "config.yaml")  # the CA, leaf store and host sets
    sites, credentials = site_resolver(parts.registries), credential_sources(parts.registries)
    served = 0
    for registry in config.registries:
        realms = registry.auth_hosts if registry.intercept_auth_hosts else ()
        intercepted = registry.hosts + realms
        for pattern in intercepted:
            host = concrete(pattern)
            assert answer(parts, host, healthy=True) == "192.0.2.10", host
            unhealthy = answer(parts, host, healthy=False)
            assert unhealthy == (None if registry.fail_open else "192.0.2.10"), host
            assert leaf(parts, host) is not None, host
            assert host in parts.leaves.minted_names
            site = sites(host)
            assert site is not None, host
            assert (site.api, site.label) == (pattern in registry.hosts, pattern), host
            named = tuple(h for h in registry.hosts if not h.startswith("*"))
            assert site.aliases == (named if host in named else ()), host  # one registry
            assert site.own_credentials == (registry.credentials is not None)
            lent = credentials(host)
            if registry.credentials is not None and pattern in registry.hosts:
                assert isinstance(lent, CredentialSource), host
                assert lent.method == registry.credentials.method
            else:
                assert lent is None, host  # never to a token realm, nor another registry
            assert parts.registries.label(host) == pattern
            served += 1
        for pattern in registry.redirect_hosts + tuple(set(registry.auth_hosts) - set(intercepted)):
            host = concrete(pattern)  # followed or reached directly, never intercepted
            assert answer(parts, host, healthy=True) is None, host
            assert leaf(parts, host) is None, host
            assert sites(host) is None and credentials(host) is None, host
            assert parts.registries.label(host) == pattern
    assert served == 10
    unsafe = target_policy(config, parts.registries).allowed
    assert unsafe.match("harbor.lab.example") and unsafe.match("sso.lab.example")
    assert not unsafe.match("registry-1.docker.io")
    assert answer(parts, "example.org", healthy=True) is None
    assert leaf(parts, "example.org") is None and sites("example.org") is None
    assert parts.registries.label("example.org") == "other"
