"""Responder policy in process, with our own Forwarder port faked."""

from __future__ import annotations

import asyncio
import ipaddress
import struct
from ipaddress import IPv4Address

from dnslib import EDNS0, QTYPE, RCODE, RR, A, DNSQuestion, DNSRecord

from appliance.config.hostnames import HostSet
from appliance.dns.cache import AnswerCache
from appliance.dns.responder import Interception, Responder
from appliance.dns.wire import Reply
from tests.dns.packets import upstream_reply


class BlockingForwarder:
    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls = 0

    async def exchange(
        self, question: bytes, *, dnssec_ok: bool = False, checking_disabled: bool = False
    ) -> Reply:
        self.calls += 1
        await self.release.wait()
        return upstream_reply(question)


def make(forwarder: BlockingForwarder, ipv6: str | None = None, inflight: int = 4) -> Responder:
    return Responder(
        Interception(
            HostSet.of(["ghcr.io"]),
            ipaddress.IPv4Address("192.0.2.1"),
            ipaddress.IPv6Address(ipv6) if ipv6 else None,
            30,
        ),
        forwarder,
        (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128")),
        inflight,
    )


async def ask(r: Responder, packet: bytes, client: str = "10.1.2.3") -> DNSRecord:
    raw = await r.answer(packet, client, tcp=False)
    assert raw is not None
    return DNSRecord.parse(raw)


async def test_aaaa_without_appliance_ipv6_is_empty_noerror_not_nxdomain() -> None:
    reply = await ask(make(BlockingForwarder()), DNSRecord.question("ghcr.io", "AAAA").pack())
    assert reply.header.rcode == RCODE.NOERROR and not reply.rr and reply.header.aa


async def test_any_query_returns_both_families() -> None:
    r = make(BlockingForwarder(), ipv6="2001:db8::1")
    reply = await ask(r, DNSRecord.question("ghcr.io", "ANY").pack())
    assert sorted(QTYPE[rr.rtype] for rr in reply.rr) == ["A", "AAAA"]


async def test_non_query_opcode_is_notimp() -> None:
    q = DNSRecord.question("ghcr.io")
    q.header.opcode = 4  # NOTIFY
    assert (await ask(make(BlockingForwarder()), q.pack())).header.rcode == RCODE.NOTIMP


async def test_two_questions_are_formerr() -> None:
    q = DNSRecord.question("ghcr.io")
    q.add_question(DNSQuestion("quay.io"))
    assert (await ask(make(BlockingForwarder()), q.pack())).header.rcode == RCODE.FORMERR


async def test_unparseable_query_gets_header_only_formerr_with_its_id() -> None:
    packet = struct.pack("!HHHHHH", 0xBEEF, 0x0100, 1, 0, 0, 0) + b"\x05abc"
    reply = await ask(make(BlockingForwarder()), packet)
    assert reply.header.id == 0xBEEF and reply.header.rcode == RCODE.FORMERR


async def test_ipv4_mapped_client_is_matched_against_ipv4_acl() -> None:
    reply = await ask(
        make(BlockingForwarder()), DNSRecord.question("ghcr.io").pack(), "::ffff:10.0.0.9"
    )
    assert reply.header.rcode == RCODE.NOERROR and reply.rr


async def test_forwards_beyond_the_inflight_bound_get_servfail_at_once() -> None:
    forwarder = BlockingForwarder()
    r = make(forwarder, inflight=2)
    pending = [
        asyncio.ensure_future(
            r.answer(DNSRecord.question(f"n{i}.example").pack(), "10.0.0.1", tcp=False)
        )
        for i in range(2)
    ]
    await asyncio.sleep(0)
    shed = await ask(r, DNSRecord.question("n3.example").pack())
    assert shed.header.rcode == RCODE.SERVFAIL and forwarder.calls == 2
    forwarder.release.set()
    assert all(x is not None for x in await asyncio.gather(*pending))


async def test_fail_open_answers_real_addresses_while_unhealthy() -> None:
    healthy = [True]
    real = {"ghcr.io": (ipaddress.ip_address("203.0.113.9"),)}
    interception = Interception(
        HostSet.of(["ghcr.io", "quay.io"]),
        ipaddress.IPv4Address("192.0.2.1"),
        None,
        30,
        fail_open=HostSet.of(["ghcr.io"]),
        healthy=lambda: healthy[0],
        real_addresses=real,  # type: ignore[arg-type]
    )
    responder = Responder(
        interception, BlockingForwarder(), (ipaddress.ip_network("10.0.0.0/8"),), 4
    )
    query = DNSRecord.question("ghcr.io").pack()
    assert [str(r.rdata) for r in (await ask(responder, query)).rr] == ["192.0.2.1"]
    healthy[0] = False
    assert [str(r.rdata) for r in (await ask(responder, query)).rr] == ["203.0.113.9"]
    # quay.io opted out of fail-open: still intercepted.
    quay = await ask(responder, DNSRecord.question("quay.io").pack())
    assert [str(r.rdata) for r in quay.rr] == ["192.0.2.1"]


async def test_a_repeated_query_gets_its_own_id_case_and_the_allow_list() -> None:
    """Intercepted answers are kept packed: what differs between queries must not leak."""
    responder = make(BlockingForwarder())
    for ident, name in ((1, "ghcr.io"), (2, "ghcr.io"), (3, "GhCr.Io"), (4, "ghcr.io")):
        query = DNSRecord.question(name)
        query.header.id = ident
        reply = await ask(responder, query.pack())
        assert reply.header.id == ident and str(reply.q.qname) == f"{name}."
        assert [str(r.rdata) for r in reply.rr] == ["192.0.2.1"]
        assert str(reply.rr[0].rname) == f"{name}."
    refused = await ask(responder, DNSRecord.question("ghcr.io").pack(), client="192.0.2.50")
    assert refused.header.rcode == RCODE.REFUSED and not refused.rr
    aaaa = await ask(responder, DNSRecord.question("ghcr.io", "AAAA").pack())
    assert aaaa.header.rcode == RCODE.NOERROR and not aaaa.rr


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


class CountingForwarder:
    """Answers every question with one A record of `ttl`, counting what it is asked."""

    def __init__(self, ttl: int = 30, address: str = "192.0.2.7") -> None:
        self.ttl, self.address = ttl, address
        self.asked: list[tuple[bytes, bool]] = []
        self.release: asyncio.Event | None = None

    async def exchange(
        self, question: bytes, *, dnssec_ok: bool = False, checking_disabled: bool = False
    ) -> Reply:
        self.asked.append((question, dnssec_ok))
        if self.release is not None:
            await self.release.wait()
        name = DNSRecord.parse(struct.pack("!HHHHHH", 0, 0, 1, 0, 0, 0) + question).q.qname
        record = RR(name, QTYPE.A, rdata=A(self.address), ttl=self.ttl)
        return upstream_reply(question, 0, record)


def cached(
    forwarder: CountingForwarder, clock: Clock, interception: Interception | None = None
) -> Responder:
    return Responder(
        interception or Interception(HostSet.of(["ghcr.io"]), IPv4Address("192.0.2.1"), None, 30),
        forwarder,
        (ipaddress.ip_network("10.0.0.0/8"),),
        16,
        cache=AnswerCache(64, 86400, clock=clock),
        clock=clock,
    )


def ttls(reply: DNSRecord) -> list[int]:
    return [rr.ttl for rr in reply.rr]


async def test_a_forwarded_answer_is_reused_with_its_ttl_counting_down() -> None:
    clock, forwarder = Clock(), CountingForwarder(ttl=30)
    r = cached(forwarder, clock)
    packet = DNSRecord.question("build.fwd.test").pack()
    assert ttls(await ask(r, packet)) == [30] and len(forwarder.asked) == 1
    again = DNSRecord.question("build.fwd.test")
    again.header.id ^= 0x0F0F
    reply = await ask(r, again.pack())
    assert reply.header.id == again.header.id and ttls(reply) == [30] and not reply.header.aa
    clock.now += 10.2  # the same bytes, answered from what was packed a second ago: aged
    assert ttls(await ask(r, packet)) == [20] and len(forwarder.asked) == 1
    clock.now += 19.8
    assert ttls(await ask(r, packet)) == [30] and len(forwarder.asked) == 2  # expired: asked


async def test_reuse_keeps_each_clients_case_and_edns_and_separates_dnssec() -> None:
    clock, forwarder = Clock(), CountingForwarder()
    r = cached(forwarder, clock)
    await ask(r, DNSRecord.question("build.fwd.test").pack())
    mixed = await ask(r, DNSRecord.question("Build.FWD.test").pack())
    assert str(mixed.q.qname) == "Build.FWD.test." and not mixed.ar and len(forwarder.asked) == 1
    with_edns = DNSRecord.question("build.fwd.test")
    with_edns.add_ar(EDNS0(udp_len=1232))
    assert [rr.rtype for rr in (await ask(r, with_edns.pack())).ar] == [QTYPE.OPT]
    assert len(forwarder.asked) == 1
    dnssec = DNSRecord.question("build.fwd.test")
    dnssec.add_ar(EDNS0(udp_len=1232, flags="do"))
    await ask(r, dnssec.pack())
    assert [do for _, do in forwarder.asked] == [False, True]  # DO changes the answer


async def test_one_question_in_flight_however_many_ask_and_a_flush_forgets() -> None:
    clock, forwarder = Clock(), CountingForwarder()
    forwarder.release = asyncio.Event()
    r = cached(forwarder, clock)
    waiting = [
        asyncio.ensure_future(ask(r, DNSRecord.question(name).pack()))
        for name in ("same.fwd.test", "SAME.fwd.test", "same.fwd.test")
    ]
    await asyncio.sleep(0.01)
    forwarder.release.set()
    replies = await asyncio.gather(*waiting)
    assert len(forwarder.asked) == 1 and all(ttls(reply) == [30] for reply in replies)
    assert str(replies[1].q.qname) == "SAME.fwd.test."
    r.flush()
    await ask(r, DNSRecord.question("same.fwd.test").pack())
    assert len(forwarder.asked) == 2


async def test_a_fail_open_answer_is_not_reused_once_healthy_again() -> None:
    healthy = [False]
    interception = Interception(
        HostSet.of(["ghcr.io"]),
        ipaddress.IPv4Address("192.0.2.1"),
        None,
        30,
        fail_open=HostSet.of(["ghcr.io"]),
        healthy=lambda: healthy[0],
    )
    clock, forwarder = Clock(), CountingForwarder(address="203.0.113.9")
    r = cached(forwarder, clock, interception)
    packet = DNSRecord.question("ghcr.io").pack()
    assert [str(rr.rdata) for rr in (await ask(r, packet)).rr] == ["203.0.113.9"]
    assert [str(rr.rdata) for rr in (await ask(r, packet)).rr] == ["203.0.113.9"]
    assert len(forwarder.asked) == 1  # reused while unhealthy
    healthy[0] = True
    assert [str(rr.rdata) for rr in (await ask(r, packet)).rr] == ["192.0.2.1"]


class FailingForwarder(CountingForwarder):
    async def exchange(
        self, question: bytes, *, dnssec_ok: bool = False, checking_disabled: bool = False
    ) -> Reply:
        self.asked.append((question, dnssec_ok))
        await asyncio.sleep(0.05)
        raise OSError("no resolver answers")


async def test_askers_waiting_on_a_failed_question_share_its_servfail() -> None:
    forwarder = FailingForwarder()
    r = cached(forwarder, Clock())
    replies = await asyncio.gather(
        *(ask(r, DNSRecord.question("down.fwd.test").pack()) for _ in range(5))
    )
    assert [reply.header.rcode for reply in replies] == [RCODE.SERVFAIL] * 5
    assert len(forwarder.asked) == 1  # not once more for every asker that waited


async def test_an_answer_asked_for_before_a_flush_is_not_kept_after_it() -> None:
    forwarder = CountingForwarder()
    forwarder.release = asyncio.Event()
    r = cached(forwarder, Clock())
    pending = asyncio.ensure_future(ask(r, DNSRecord.question("old.fwd.test").pack()))
    await asyncio.sleep(0.01)
    r.flush()
    forwarder.release.set()
    await pending
    await ask(r, DNSRecord.question("old.fwd.test").pack())
    assert len(forwarder.asked) == 2
