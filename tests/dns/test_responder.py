"""Responder policy in process, with our own Forwarder port faked."""

from __future__ import annotations

import asyncio
import ipaddress
import struct

from dnslib import QTYPE, RCODE, DNSQuestion, DNSRecord

from appliance.config.hostnames import HostSet
from appliance.dns.responder import Interception, Responder


class BlockingForwarder:
    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.calls = 0

    async def exchange(
        self, question: DNSQuestion, *, dnssec_ok: bool = False, checking_disabled: bool = False
    ) -> DNSRecord:
        self.calls += 1
        await self.release.wait()
        return DNSRecord(q=question).reply()


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
