"""The DNS front as `regcache serve` wires it: intercepted names answered with the
gateway's address while healthy, forwarded (fail-open) while not; others forwarded."""

from __future__ import annotations

from pathlib import Path

from dnslib import QTYPE, DNSRecord

from appliance.config.model import parse_config
from appliance.dns.responder import Forward
from appliance.main import build
from appliance.runtime.interception import dns_server

CONFIG = """\
appliance: {ipv4: 192.0.2.10}
state_dir: state
dns: {upstreams: ["127.0.0.1:9"]}
registries:
  - name: quay.io
    hosts: [quay.io]
"""


def test_the_front_answers_while_healthy_and_fails_open_while_not(tmp_path: Path) -> None:
    config = parse_config(CONFIG, tmp_path / "config.yaml")
    parts = build(config, tmp_path / "config.yaml")
    healthy = True
    server = dns_server(config, parts.registries, parts.resolver, parts.metrics, lambda: healthy)

    def ask(name: str) -> str | None:
        reply = server.responder.decide(DNSRecord.question(name, "A").pack(), "127.0.0.1",
                                        tcp=False)  # fmt: skip
        if isinstance(reply, Forward):
            return None
        assert reply is not None
        records = DNSRecord.parse(reply).rr
        assert [r.rtype for r in records] == [QTYPE.A]
        return str(records[0].rdata)

    assert ask("quay.io") == "192.0.2.10"
    assert ask("example.org") is None
    healthy = False
    assert ask("quay.io") is None
    counted = parts.metrics.registry.get_sample_value
    assert counted("regcache_dns_queries_total", {"qtype": "A", "outcome": "intercepted"}) == 1
    assert counted("regcache_dns_queries_total", {"qtype": "A", "outcome": "forwarded"}) == 1
    assert counted("regcache_dns_queries_total", {"qtype": "A", "outcome": "fail-open"}) == 1
