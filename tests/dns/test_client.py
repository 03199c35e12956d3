"""The upstream resolver client regcache uses for itself (the proxy's lookups)."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
from pathlib import Path

import pytest
from dnslib import DNSRecord

from appliance.config.model import Endpoint
from appliance.dns.client import ResolverError, UpstreamResolver, nameservers_from
from tests.dns.fake_upstream import FakeUpstream


def ep(text: str) -> Endpoint:
    return Endpoint.parse(text)


def test_resolv_conf_nameservers_exclude_regcache_itself(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "# comment\nnameserver 127.0.0.1\nnameserver 192.0.2.1\nnameserver fe80::1%eth0\n"
        "nameserver bogus\nsearch example\n"
    )
    assert nameservers_from(conf, exclude=[ep("127.0.0.1:53")]) == [
        ep("192.0.2.1:53"),
        ep("[fe80::1]:53"),
    ]
    # Listening on the wildcard address: loopback nameservers are regcache itself.
    assert nameservers_from(conf, exclude=[ep("0.0.0.0:53")]) == [ep("[fe80::1]:53")]
    assert len(nameservers_from(conf, exclude=[ep("127.0.0.1:5353")])) == 3


async def test_resolve_uses_overrides_before_dns(upstream: FakeUpstream) -> None:
    addr = ipaddress.ip_address("198.51.100.4")
    resolver = UpstreamResolver([ep(f"127.0.0.1:{upstream.port}")], 0.5, {"Ghcr.IO.": (addr,)})
    before = len(upstream.seen)
    assert await resolver.resolve("ghcr.io") == (addr,)
    assert len(upstream.seen) == before


async def test_resolve_asks_upstream_once_then_caches(upstream: FakeUpstream) -> None:
    resolver = UpstreamResolver([ep(f"127.0.0.1:{upstream.port}")], 0.5)
    assert await resolver.resolve("reg.fwd.test") == (ipaddress.ip_address("192.0.2.7"),)
    asked = upstream.names().count("reg.fwd.test.")
    assert asked == 2  # A and AAAA
    await resolver.resolve("REG.fwd.test.")
    assert upstream.names().count("reg.fwd.test.") == asked


async def test_resolve_fails_clearly_when_no_upstream_answers(upstream: FakeUpstream) -> None:
    resolver = UpstreamResolver([ep(f"127.0.0.1:{upstream.port}")], 0.2)
    with pytest.raises(ResolverError, match=r"slow\.test"):
        await resolver.resolve("slow.test")


async def test_next_upstream_is_tried_after_a_dead_one(upstream: FakeUpstream) -> None:
    from tests.harness import free_port

    dead = ep(f"127.0.0.1:{free_port()}")
    resolver = UpstreamResolver([dead, ep(f"127.0.0.1:{upstream.port}")], 0.5)
    assert await resolver.resolve("two.fwd.test") == (ipaddress.ip_address("192.0.2.7"),)


async def test_the_last_answer_stands_in_while_no_resolver_answers(
    upstream: FakeUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    """RFC 8767 serve-stale: past its TTL, while the resolvers are silent, a name keeps
    its last addresses (for a day), asked again only every 30 s (each new connection
    would wait the timeouts), once however many ask; a name never resolved fails."""
    now = [1000.0]
    resolver = UpstreamResolver([ep(f"127.0.0.1:{upstream.port}")], 0.2, clock=lambda: now[0])
    address = ipaddress.ip_address("192.0.2.7")
    assert await resolver.resolve("stale.fwd.test") == (address,)
    upstream.silent.update({"stale.fwd.test.", "never.fwd.test."})  # stops answering
    now[0] += 31  # past the answer's 30 s TTL
    asked = upstream.names().count("stale.fwd.test.")
    answers = await asyncio.gather(*(resolver.resolve("stale.fwd.test") for _ in range(5)))
    assert answers == [(address,)] * 5
    assert "dns serving-stale name=stale.fwd.test" in caplog.text
    assert upstream.names().count("stale.fwd.test.") == asked + 2  # A and AAAA, once
    now[0] += 29
    assert await resolver.resolve("stale.fwd.test") == (address,)
    assert upstream.names().count("stale.fwd.test.") == asked + 2  # not asked again yet
    with pytest.raises(ResolverError):
        await resolver.resolve("never.fwd.test")
    now[0] += 86400
    with pytest.raises(ResolverError):
        await resolver.resolve("stale.fwd.test")


async def test_a_resolver_saying_no_such_name_is_believed_at_once(upstream: FakeUpstream) -> None:
    now = [1000.0]
    resolver = UpstreamResolver([ep(f"127.0.0.1:{upstream.port}")], 0.5, clock=lambda: now[0])
    assert await resolver.resolve("gone.fwd.test")
    now[0] += 31
    upstream.nxdomain.add("gone.fwd.test.")
    with pytest.raises(ResolverError, match="gone"):
        await resolver.resolve("gone.fwd.test")


async def test_replies_that_are_not_ours_are_skipped_for_the_one_that_is(
    upstream: FakeUpstream,
) -> None:
    """The upstream sends, back to back, a reply with another ID and one for another
    name before the real one: the socket holds all three at once, and only the real
    one is taken."""
    resolver = UpstreamResolver([ep(f"127.0.0.1:{upstream.port}")], 2.0)
    assert await resolver.resolve("forged.test") == (ipaddress.ip_address("192.0.2.9"),)


async def test_a_refused_query_fails_at_once_and_leaves_no_socket_behind() -> None:
    """ICMP port unreachable ends the wait on its own, not the (here long) deadline; a
    failed or timed-out query leaves no descriptor and no reader registered."""
    from tests.harness import free_port

    dead = UpstreamResolver([ep(f"127.0.0.1:{free_port()}")], 30.0)
    question = DNSRecord.question("refused.fwd.test").pack()[12:]
    loop = asyncio.get_running_loop()
    selector = loop._selector  # type: ignore[attr-defined]
    fds, readers = len(os.listdir("/proc/self/fd")), len(selector.get_map())
    with pytest.raises(ResolverError, match="ConnectionRefusedError"):
        await dead.exchange(question)
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # takes queries, never answers
    silent.bind(("127.0.0.1", 0))
    with silent:
        slow = UpstreamResolver([ep(f"127.0.0.1:{silent.getsockname()[1]}")], 0.05)
        for _ in range(10):
            with pytest.raises(ResolverError, match="TimeoutError"):
                await slow.exchange(question)
    assert len(os.listdir("/proc/self/fd")) == fds
    assert len(selector.get_map()) == readers
